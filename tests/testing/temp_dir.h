// A fresh directory for one test, removed with everything in it when the
// TempDir goes out of scope (also when the test fails).
//
//   TempDir dir("pull_test_");                     // under ::testing::TempDir()
//   const std::string config = dir.Write("config.json", R"({"a": 1})");
//   RunTool({"--out", dir.Path("out")});
//
// Thread safety: none needed (one test thread); path() may be read anywhere.
#ifndef TANDEM_TESTS_TESTING_TEMP_DIR_H_
#define TANDEM_TESTS_TESTING_TEMP_DIR_H_

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "gtest/gtest.h"

namespace tandem::testing {

class TempDir {
 public:
  // Creates ::testing::TempDir()/<prefix>XXXXXX (honours TEST_TMPDIR); a
  // failure to create it fails the test.
  explicit TempDir(std::string_view prefix = "tandem_test_") {
    std::string pattern = ::testing::TempDir();
    if (!pattern.empty() && pattern.back() != '/') pattern += '/';
    pattern.append(prefix).append("XXXXXX");
    if (mkdtemp(pattern.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp(" << pattern << ") failed";
      return;
    }
    path_ = pattern;
  }
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;  // best effort: a test never fails on cleanup
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // The directory ("" if it could not be created).
  const std::string& path() const { return path_; }
  // path()/name; nothing is created.
  std::string Path(std::string_view name) const { return path_ + "/" + std::string(name); }
  // Writes `bytes` to path()/name (binary, replacing it; parent directories
  // created) and returns that path.
  std::string Write(std::string_view name, std::string_view bytes) const {
    const std::string p = Path(name);
    std::filesystem::create_directories(std::filesystem::path(p).parent_path());
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) ADD_FAILURE() << "cannot write " << p;
    return p;
  }

 private:
  std::string path_;
};

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_TEMP_DIR_H_
