// Hugging Face tokenizer.json to BpeTokenizer. See tokenizer_json.h.
#include "model/tokenizer_json.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/bpe_tokenizer.h"

namespace tandem::model {
namespace {

using Json = nlohmann::json;

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581 "▁"

// `text` as a regex matching it literally.
std::string EscapeRegex(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

std::string TypeOf(const Json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "?";
}

// A Split/Replace "pattern": {"Regex": ...} or {"String": ...} as a regex.
absl::StatusOr<std::string> PatternRegex(const Json& pattern, const char* where) {
  if (pattern.is_object() && pattern.contains("Regex")) return pattern["Regex"].get<std::string>();
  if (pattern.is_object() && pattern.contains("String"))
    return EscapeRegex(pattern["String"].get<std::string>());
  return absl::InvalidArgumentError(absl::StrCat(where, ": pattern is neither Regex nor String"));
}

absl::Status ApplyNormalizer(const Json& n, BpeOptions* options) {
  if (n.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(n);
  if (type == "Sequence") {
    for (const Json& child : n.at("normalizers")) TANDEM_RETURN_IF_ERROR(ApplyNormalizer(child, options));
    return absl::OkStatus();
  }
  if (type == "NFC") {
    options->nfc = true;
    return absl::OkStatus();
  }
  if (type == "Prepend" && n.value("prepend", "") == kMetaspace) {
    options->prepend_metaspace = BpeOptions::Prepend::kAlways;
    return absl::OkStatus();
  }
  if (type == "Replace" && n.contains("pattern") && n["pattern"].contains("String") &&
      n["pattern"]["String"] == " " && n.value("content", "") == kMetaspace) {
    options->spaces_to_metaspace = true;
    return absl::OkStatus();
  }
  return absl::UnimplementedError(absl::StrCat("tokenizer.json: normalizer ", n.dump(), " is not supported"));
}

absl::Status ApplyPreTokenizer(const Json& p, BpeOptions* options, bool* byte_level) {
  if (p.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(p);
  if (type == "Sequence") {
    for (const Json& child : p.at("pretokenizers")) {
      TANDEM_RETURN_IF_ERROR(ApplyPreTokenizer(child, options, byte_level));
    }
    return absl::OkStatus();
  }
  if (type == "Split") {
    if (p.value("invert", false) || p.value("behavior", "Isolated") != "Isolated") {
      return absl::UnimplementedError(
          absl::StrCat("tokenizer.json: Split pre-tokenizer ", p.dump(), " (only Isolated, not inverted)"));
    }
    TANDEM_ASSIGN_OR_RETURN(std::string regex, PatternRegex(p.at("pattern"), "Split"));
    options->pre_tokenizer.push_back({.pattern = std::move(regex)});
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    *byte_level = true;
    if (p.value("add_prefix_space", false)) {
      options->pre_tokenizer.push_back({.kind = PreTokenizerStep::Kind::kPrefixSpace});
    }
    if (p.value("use_regex", true)) {
      TANDEM_ASSIGN_OR_RETURN(BpeOptions gpt2, BpeOptionsForGgufPre("gpt2"));
      options->pre_tokenizer.push_back(gpt2.pre_tokenizer.at(0));
    }
    return absl::OkStatus();
  }
  if (type == "Digits") {
    options->pre_tokenizer.push_back(
        {.pattern = p.value("individual_digits", false) ? R"(\p{Nd})" : R"(\p{Nd}+)"});
    return absl::OkStatus();
  }
  if (type == "Metaspace") {
    if (p.value("replacement", std::string(kMetaspace)) != kMetaspace) {
      return absl::UnimplementedError("tokenizer.json: Metaspace replacement other than U+2581");
    }
    options->spaces_to_metaspace = true;
    options->prepend_only_if_absent = true;
    std::string scheme = p.value("prepend_scheme", p.value("add_prefix_space", true) ? "always" : "never");
    options->prepend_metaspace = scheme == "always"  ? BpeOptions::Prepend::kAlways
                                 : scheme == "first" ? BpeOptions::Prepend::kFirst
                                                     : BpeOptions::Prepend::kNever;
    if (p.value("split", true)) {
      // MergedWithNext on "▁": each "▁" starts a piece.
      options->pre_tokenizer.push_back({.pattern = "[^\\x{2581}]+|\\x{2581}[^\\x{2581}]*"});
    }
    return absl::OkStatus();
  }
  return absl::UnimplementedError(absl::StrCat("tokenizer.json: pre-tokenizer ", type, " is not supported"));
}

// The text of a tokenizer_config.json token entry: "text", {"content":
// "text"} or null ("").
std::string TokenText(const Json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return "";
  const Json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return "";
}

absl::StatusOr<HfTokenizer> Parse(const HfTokenizerFiles& files) {
  const Json root = Json::parse(files.tokenizer_json, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError("tokenizer.json is not a JSON object");
  }
  Json config = Json::object();
  if (!files.tokenizer_config_json.empty()) {
    config = Json::parse(files.tokenizer_config_json, nullptr, false);
    if (config.is_discarded() || !config.is_object()) {
      return absl::InvalidArgumentError("tokenizer_config.json is not a JSON object");
    }
  }
  Json generation = Json::object();
  if (!files.generation_config_json.empty()) {
    generation = Json::parse(files.generation_config_json, nullptr, false);
    if (generation.is_discarded()) return absl::InvalidArgumentError("generation_config.json is not JSON");
  }

  const Json& model = root.at("model");
  if (model.value("type", "BPE") != "BPE") {
    return absl::UnimplementedError(
        absl::StrCat("tokenizer.json: model type ", TypeOf(model), " is not supported (only BPE)"));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      return absl::UnimplementedError(absl::StrCat("tokenizer.json: BPE ", key, " is not supported"));
    }
  }

  // Vocabulary: model.vocab plus added_tokens, by id.
  Vocabulary vocab;
  vocab.model = "gpt2";
  vocab.pre = "";
  vocab.add_space_prefix = false;
  const Json& model_vocab = model.at("vocab");
  if (!model_vocab.is_object())
    return absl::InvalidArgumentError("tokenizer.json: model.vocab is not an object");
  int64_t size = 0;
  for (const auto& [text, id] : model_vocab.items()) size = std::max<int64_t>(size, id.get<int64_t>() + 1);
  const Json& added = root.contains("added_tokens") ? root["added_tokens"] : Json::array();
  for (const Json& token : added) size = std::max<int64_t>(size, token.at("id").get<int64_t>() + 1);
  if (size <= 0 || size > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: vocabulary of ", size, " ids"));
  }
  vocab.tokens.assign(size, "");
  vocab.types.assign(size, TokenType::kUnused);
  vocab.scores.assign(size, 0.0f);
  const bool byte_fallback = model.value("byte_fallback", false);
  for (const auto& [text, id_json] : model_vocab.items()) {
    const int64_t id = id_json.get<int64_t>();
    if (id < 0)
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: token '", text, "' has id ", id));
    vocab.tokens[id] = text;
    const bool is_byte = byte_fallback && text.size() == 6 && text.starts_with("<0x") && text.back() == '>';
    vocab.types[id] = is_byte ? TokenType::kByte : TokenType::kNormal;
  }
  absl::flat_hash_map<std::string, int32_t> added_ids;
  std::vector<int32_t> lstrip_ids;
  std::vector<int32_t> rstrip_ids;
  for (const Json& token : added) {
    const int64_t id = token.at("id").get<int64_t>();
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: added token id ", id));
    vocab.tokens[id] = token.at("content").get<std::string>();
    vocab.types[id] = token.value("special", false) ? TokenType::kControl : TokenType::kUserDefined;
    added_ids[vocab.tokens[id]] = static_cast<int32_t>(id);
    if (token.value("lstrip", false)) lstrip_ids.push_back(static_cast<int32_t>(id));
    if (token.value("rstrip", false)) rstrip_ids.push_back(static_cast<int32_t>(id));
  }
  const auto find_id = [&](const std::string& text) -> int32_t {
    if (text.empty()) return -1;
    if (auto it = added_ids.find(text); it != added_ids.end()) return it->second;
    if (model_vocab.contains(text)) return model_vocab[text].get<int32_t>();
    return -1;
  };

  BpeOptions options;
  options.byte_fallback = byte_fallback;
  options.lstrip_ids = std::move(lstrip_ids);
  options.rstrip_ids = std::move(rstrip_ids);
  options.ignore_merges = model.value("ignore_merges", false);
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    options.unk_id = find_id(model["unk_token"].get<std::string>());
  }

  // Merges, by rank.
  const Json& merges = model.contains("merges") ? model["merges"] : Json::array();
  bool spaced = false;
  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.reserve(merges.size());
  for (const Json& merge : merges) {
    if (merge.is_array() && merge.size() == 2) {
      pairs.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
      spaced = spaced || pairs.back().first.find(' ') != std::string::npos ||
               pairs.back().second.find(' ') != std::string::npos;
    } else if (merge.is_string()) {
      const std::string s = merge.get<std::string>();
      const size_t space = s.find(' ', 1);
      if (space == std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: merge '", s, "' is not 'a b'"));
      }
      pairs.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: merge ", merge.dump()));
    }
  }
  // The vocabulary keeps them GGUF-shaped ("a b"); pairs whose parts hold a
  // space cannot be, so they go in the options instead.
  if (spaced) {
    options.merges = std::move(pairs);
  } else {
    vocab.merges.reserve(pairs.size());
    for (auto& [a, b] : pairs) vocab.merges.push_back(absl::StrCat(a, " ", b));
  }

  TANDEM_RETURN_IF_ERROR(ApplyNormalizer(root.value("normalizer", Json()), &options));
  bool byte_level = false;
  TANDEM_RETURN_IF_ERROR(ApplyPreTokenizer(root.value("pre_tokenizer", Json()), &options, &byte_level));
  if (!byte_level && TypeOf(root.value("decoder", Json())) == "ByteLevel") byte_level = true;
  options.byte_level = byte_level;
  if (!byte_level) vocab.model = "bpe";

  // Post-processor: the `single` template of a TemplateProcessing.
  bool has_template = false;
  std::vector<Json> processors;
  if (const Json post = root.value("post_processor", Json()); !post.is_null()) {
    if (TypeOf(post) == "Sequence") {
      for (const Json& p : post.at("processors")) processors.push_back(p);
    } else {
      processors.push_back(post);
    }
  }
  for (const Json& p : processors) {
    if (TypeOf(p) != "TemplateProcessing") continue;
    has_template = true;
    bool before = true;
    for (const Json& item : p.at("single")) {
      if (item.contains("Sequence")) {
        before = false;
        continue;
      }
      if (!item.contains("SpecialToken")) continue;
      const std::string name = item["SpecialToken"].at("id").get<std::string>();
      std::vector<int32_t> ids;
      if (p.contains("special_tokens") && p["special_tokens"].contains(name)) {
        for (const Json& id : p["special_tokens"][name].at("ids")) ids.push_back(id.get<int32_t>());
      } else if (int32_t id = find_id(name); id >= 0) {
        ids.push_back(id);
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("tokenizer.json: template token '", name, "' is unknown"));
      }
      auto& target = before ? options.prefix_ids : options.suffix_ids;
      target.insert(target.end(), ids.begin(), ids.end());
    }
  }

  // bos / eos / end of generation.
  const int32_t config_bos = find_id(TokenText(config, "bos_token"));
  int32_t config_eos = find_id(TokenText(config, "eos_token"));
  std::vector<int32_t> generation_eos;
  if (generation.is_object() && generation.contains("eos_token_id")) {
    const Json& e = generation["eos_token_id"];
    if (e.is_number_integer()) generation_eos.push_back(e.get<int32_t>());
    if (e.is_array()) {
      for (const Json& id : e) {
        if (id.is_number_integer()) generation_eos.push_back(id.get<int32_t>());
      }
    }
  }
  if (config_eos < 0 && !generation_eos.empty()) config_eos = generation_eos.front();
  vocab.eos_id = config_eos >= 0 ? config_eos : 0;
  vocab.bos_id = config_bos >= 0               ? config_bos
                 : !options.prefix_ids.empty() ? options.prefix_ids.front()
                                               : vocab.eos_id;
  vocab.unk_id = std::max(options.unk_id, 0);
  for (int32_t id : generation_eos) {
    if (id >= 0 && id < size && id != vocab.eos_id) vocab.eog_ids.push_back(id);
  }
  // Without a template, tokenizer_config.json's add_bos_token decides.
  if (!has_template && config.value("add_bos_token", false) && config_bos >= 0) {
    options.prefix_ids = {config_bos};
  }
  vocab.add_bos = !options.prefix_ids.empty() || !options.suffix_ids.empty();

  HfTokenizer result;
  if (config.contains("chat_template")) {
    const Json& t = config["chat_template"];
    if (t.is_string()) result.chat_template = t.get<std::string>();
    if (t.is_array()) {
      for (const Json& named : t) {
        if (named.value("name", "") == "default") result.chat_template = named.value("template", "");
      }
    }
  }
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> tokenizer,
                          BpeTokenizer::Create(std::move(vocab), std::move(options)));
  result.tokenizer = std::move(tokenizer);
  return result;
}

absl::StatusOr<std::string> ReadFile(const std::string& path, bool required) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (required) return absl::NotFoundError(absl::StrCat("cannot read ", path));
    return std::string();
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<HfTokenizer> TokenizerFromHfFiles(const HfTokenizerFiles& files) {
  // nlohmann::json throws on a field of the wrong type: caught here, where it
  // enters.
  try {
    return Parse(files);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", e.what()));
  }
}

absl::StatusOr<HfTokenizer> LoadHfTokenizer(std::string_view dir_view) {
  const std::string dir(dir_view);
  HfTokenizerFiles files;
  TANDEM_ASSIGN_OR_RETURN(files.tokenizer_json, ReadFile(dir + "/tokenizer.json", true));
  TANDEM_ASSIGN_OR_RETURN(files.tokenizer_config_json, ReadFile(dir + "/tokenizer_config.json", false));
  TANDEM_ASSIGN_OR_RETURN(files.generation_config_json, ReadFile(dir + "/generation_config.json", false));
  absl::StatusOr<HfTokenizer> result = TokenizerFromHfFiles(files);
  if (!result.ok()) {
    return absl::Status(result.status().code(), absl::StrCat(dir, ": ", result.status().message()));
  }
  return result;
}

}  // namespace tandem::model
