// flowd's entry point: parses the command line and wires the modules together. Nothing
// here decides behaviour; it only composes.
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/program_options.hpp>

#include <charconv>
#include <cstdio>
#include <iostream>
#include <optional>
#include <thread>

#include "api/key_ring.h"
#include "api/routes.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/spawn.h"
#include "flow/catalog.h"
#include "flow/engine.h"
#include "flow/webhooks.h"
#include "net/http_client.h"
#include "net/http_server.h"
#include "store/store.h"

namespace asio = boost::asio;
namespace po = boost::program_options;
using namespace flowd;

namespace {

constexpr const char* kUsage =
    "usage: flowd serve [options]            serve the API\n"
    "       flowd keys create --data DIR [--account NAME] [--name NAME]\n"
    "                                        create an API key while the server is stopped\n"
    "       flowd --help | --version\n"
    "`flowd serve --help` and `flowd keys create --help` list their options.\n";

// "1MiB", "64KiB", "512k", "1048576" -> bytes.
bool ParseSize(const std::string& s, size_t& out) {
  size_t n = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (ec != std::errc() || end == s.data()) return false;
  std::string unit(end, s.data() + s.size());
  size_t mult = 1;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "KiB" || unit == "k" || unit == "K" || unit == "KB") mult = 1024;
  else if (unit == "MiB" || unit == "m" || unit == "M" || unit == "MB") mult = 1024 * 1024;
  else return false;
  out = n * mult;
  return true;
}

// FLOWD_MAX_BODY -> "max-body", for every option the command knows.
std::function<std::string(std::string)> EnvMapper(const po::options_description& desc) {
  return [&desc](std::string env) -> std::string {
    if (env.rfind("FLOWD_", 0) != 0) return "";
    std::string name = env.substr(6);
    for (auto& c : name) c = c == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return desc.find_nothrow(name, false) ? name : "";
  };
}

// "127.0.0.1:8080", "[::1]:0" -> an endpoint.
std::optional<asio::ip::tcp::endpoint> ParseEndpoint(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  std::string host = s.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  boost::system::error_code ec;
  auto address = asio::ip::make_address(host, ec);
  unsigned port = 0;
  auto [end, pec] = std::from_chars(s.data() + colon + 1, s.data() + s.size(), port);
  if (ec || pec != std::errc() || end != s.data() + s.size() || port > 65535) return std::nullopt;
  return asio::ip::tcp::endpoint(address, static_cast<unsigned short>(port));
}

int Fail(const std::string& message) {
  std::cerr << "flowd: " << message << "\n";
  return 2;
}

// The io_context, able to destroy its pending handlers (and the coroutine frames they
// own) on demand, before the objects those frames refer to go away.
class EventLoop : public asio::io_context {
 public:
  using asio::io_context::io_context;
  void DestroyPendingWork() { shutdown(); }
};

// A plain function, not a capturing lambda: a coroutine keeps only a pointer to a
// lambda's captures, which die with the expression that started it.
asio::awaitable<void> DrainThenStop(net::Server& server, net::Server* admin, asio::io_context& ioc,
                                    std::chrono::milliseconds timeout) {
  co_await server.Drain(timeout);
  if (admin) co_await admin->Drain(std::chrono::milliseconds(0));
  ioc.stop();
}

int Serve(int argc, char** argv) {
  std::string listen, admin_listen, tls_cert, tls_key, data, durability, max_body, drain, log_level, ca_file;
  std::string retry_schedule, webhook_timeout, secret_grace, retention, rate_limit;
  std::vector<std::string> allow_cidrs;
  bool allow_private = false;
  int threads = 1;
  size_t max_queued = 100000;
  net::ServerOptions server_options;
  po::options_description desc("flowd serve options");
  desc.add_options()
      ("listen", po::value(&listen)->default_value("127.0.0.1:8080"), "address:port; port 0 takes a free one")
      ("admin-listen", po::value(&admin_listen), "address:port serving /healthz, /readyz and /metrics instead")
      ("tls-cert", po::value(&tls_cert), "certificate chain (PEM): serve HTTPS on --listen, with --tls-key")
      ("tls-key", po::value(&tls_key), "private key (PEM) of --tls-cert")
      ("data", po::value(&data)->default_value("./data"), "data folder (RocksDB)")
      ("threads", po::value(&threads)->default_value(1), "threads running the event loop")
      ("durability", po::value(&durability)->default_value("sync"), "sync: a 202 only after fsync; async: no fsync")
      ("max-body", po::value(&max_body)->default_value("1MiB"), "largest request body")
      ("max-queued-runs", po::value(&max_queued)->default_value(100000), "live runs before 429 queue_full")
      ("max-connections", po::value(&server_options.max_connections)->default_value(10000),
       "open connections before new ones get 503")
      ("drain-timeout", po::value(&drain)->default_value("10s"), "how long SIGTERM waits for requests in flight")
      ("retention", po::value(&retention)->default_value("48h"), "how long ended runs are kept")
      ("rate-limit", po::value(&rate_limit)->default_value("off"), "requests per second per API key, e.g. 100/s")
      ("log-level", po::value(&log_level)->default_value("info"), "debug, info, warn or error")
      ("webhook-allow-private", po::bool_switch(&allow_private), "let outbound requests reach private addresses")
      ("webhook-allow-cidr", po::value(&allow_cidrs)->composing(), "let outbound requests reach this CIDR (repeatable)")
      ("ca-file", po::value(&ca_file), "extra CA certificates (PEM) trusted for outbound https")
      ("webhook-retry-schedule", po::value(&retry_schedule)->default_value("5s,5m,30m,2h,5h,10h,10h"),
       "delays between webhook attempts")
      ("webhook-timeout", po::value(&webhook_timeout)->default_value("15s"), "one webhook attempt")
      ("webhook-secret-grace", po::value(&secret_grace)->default_value("24h"),
       "how long the previous webhook secret still signs after a rotation")
      ("help", "this text");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    po::store(po::parse_environment(desc, EnvMapper(desc)), vm);
    po::notify(vm);
  } catch (const std::exception& e) {
    return Fail(e.what());
  }
  if (vm.count("help")) {
    std::cout << kUsage << "\n" << desc;
    return 0;
  }
  LogLevel level;
  if (!ParseLogLevel(log_level, level)) return Fail("--log-level must be debug, info, warn or error");
  SetLogLevel(level);
  if (!ParseSize(max_body, server_options.max_body)) return Fail("--max-body: expected a size such as 1MiB");
  auto drain_ms = ParseDurationMs(drain);
  if (!drain_ms) return Fail("--drain-timeout: expected a duration such as 10s");
  if (durability != "sync" && durability != "async") return Fail("--durability must be sync or async");
  if (threads < 1 || threads > 64) return Fail("--threads must be between 1 and 64");
  auto at = ParseEndpoint(listen);
  if (!at) return Fail("--listen: expected address:port, e.g. 127.0.0.1:8080");
  std::optional<asio::ip::tcp::endpoint> admin_at;
  if (!admin_listen.empty() && !(admin_at = ParseEndpoint(admin_listen))) {
    return Fail("--admin-listen: expected address:port, e.g. 127.0.0.1:9090");
  }

  std::vector<net::Cidr> cidrs;
  for (const auto& c : allow_cidrs) {
    auto parsed = net::Cidr::Parse(c);
    if (!parsed) return Fail("--webhook-allow-cidr: not a CIDR: " + c);
    cidrs.push_back(*parsed);
  }
  flow::WebhookOptions webhook_options;
  webhook_options.schedule.clear();
  for (size_t start = 0; start <= retry_schedule.size();) {
    size_t comma = std::min(retry_schedule.find(',', start), retry_schedule.size());
    auto ms = ParseDurationMs(std::string_view(retry_schedule).substr(start, comma - start));
    if (!ms) return Fail("--webhook-retry-schedule: expected durations such as 5s,5m,30m");
    webhook_options.schedule.emplace_back(*ms);
    start = comma + 1;
  }
  auto hook_timeout = ParseDurationMs(webhook_timeout);
  auto grace = ParseDurationMs(secret_grace);
  if (!hook_timeout || *hook_timeout == 0) return Fail("--webhook-timeout: expected a duration such as 15s");
  if (!grace) return Fail("--webhook-secret-grace: expected a duration such as 24h");
  double rate_per_second = 0;
  if (rate_limit != "off") {
    std::string n = rate_limit.substr(0, rate_limit.find('/'));
    auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), rate_per_second);
    if (ec != std::errc() || end != n.data() + n.size() || rate_per_second <= 0 ||
        (rate_limit.find('/') != std::string::npos && rate_limit.substr(rate_limit.find('/')) != "/s")) {
      return Fail("--rate-limit: expected requests per second, e.g. 100/s");
    }
  }
  auto retention_ms = ParseDurationMs(retention);
  if (!retention_ms || *retention_ms == 0) return Fail("--retention: expected a duration such as 48h");
  webhook_options.timeout = std::chrono::milliseconds(*hook_timeout);
  webhook_options.secret_grace = std::chrono::milliseconds(*grace);

  net::ClientOptions client_options;
  client_options.policy = net::AddressPolicy(allow_private, std::move(cidrs));
  client_options.ca_file = ca_file;
  client_options.user_agent = std::string("flowd/") + FLOWD_VERSION;

  // HTTPS on the API listener; the admin listener stays plain (it faces the operator).
  std::optional<asio::ssl::context> tls;
  if (tls_cert.empty() != tls_key.empty()) return Fail("--tls-cert and --tls-key go together");
  if (!tls_cert.empty()) {
    tls.emplace(asio::ssl::context::tls_server);
    boost::system::error_code tec;
    tls->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                         asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 | asio::ssl::context::no_tlsv1_1,
                     tec);
    if (!tec) tls->use_certificate_chain_file(tls_cert, tec);
    if (tec) return Fail("--tls-cert " + tls_cert + ": " + tec.message());
    tls->use_private_key_file(tls_key, asio::ssl::context::pem, tec);
    if (tec) return Fail("--tls-key " + tls_key + ": " + tec.message());
    server_options.tls = &*tls;
  }

  std::string error;
  auto store = store::Store::Open({data, durability == "sync"}, &error);
  if (!store) return Fail("cannot open the data folder " + data + ": " + error);

  EventLoop ioc(threads);
  {
    flow::Catalog catalog(*store);
    api::KeyRing keys(*store);
    keys.LoadSync();
    std::unique_ptr<net::HttpClient> http;
    try {
      http = std::make_unique<net::HttpClient>(ioc, client_options);
    } catch (const std::exception& e) {
      return Fail(e.what());
    }
    const flow::Providers providers = flow::Providers::FromEnvironment();
    flow::WebhookSecrets secrets(*store, webhook_options.secret_grace);
    flow::Webhooks webhooks(ioc, *store, *http, secrets, webhook_options);
    asio::thread_pool compute(1);
    flow::NodeEnv node_env{*http, providers, webhooks, compute};
    flow::EngineOptions engine_options;
    engine_options.max_queued_runs = max_queued;
    engine_options.retention_ms = *retention_ms;
    engine_options.keep_ended_ms = std::min<int64_t>(engine_options.keep_ended_ms, *retention_ms / 2);
    flow::Engine engine(ioc, *store, catalog, node_env, engine_options);
    net::Server* server_ptr = nullptr;
    api::Routes routes(keys, catalog, engine, webhooks, secrets, *store,
                       [&] { return server_ptr && !server_ptr->draining(); }, rate_per_second);
    net::Server server(ioc, routes, server_options);
    server_ptr = &server;
    routes.AddMetricsSource([&](std::string& out) { server.RenderMetrics(out); });
    routes.AddMetricsSource([&](std::string& out) { engine.RenderMetrics(out); });
    routes.AddMetricsSource([&](std::string& out) { webhooks.RenderMetrics(out); });
    routes.AddMetricsSource([&](std::string& out) { store->RenderMetrics(out); });
    if (!server.Listen(*at, &error)) return Fail("cannot listen on " + listen + ": " + error);
    std::optional<net::Server> admin;
    if (admin_at) {
      net::ServerOptions admin_options = server_options;
      admin_options.tls = nullptr;
      admin.emplace(ioc, routes.Admin(), admin_options);
      if (!admin->Listen(*admin_at, &error)) return Fail("cannot listen on " + admin_listen + ": " + error);
    }

    size_t resumed = engine.Resume();
    size_t resumed_deliveries = webhooks.ResumeSync();
    engine.StartSweeper();
    server.Start();
    if (admin) admin->Start();

    asio::signal_set signals(ioc, SIGINT, SIGTERM);
    signals.async_wait([&](const boost::system::error_code& e, int sig) {
      if (e) return;
      Log(LogLevel::kInfo, "shutting down", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
      SpawnLogged(ioc, DrainThenStop(server, admin ? &*admin : nullptr, ioc, std::chrono::milliseconds(*drain_ms)),
                  "drain");
    });

    auto ep = server.local_endpoint();
    Log(LogLevel::kInfo, "listening on " + ep.address().to_string() + ":" + std::to_string(ep.port()),
        {{"scheme", tls ? "https" : "http"}, {"data", data}, {"durability", durability}, {"resumed_runs", std::to_string(resumed)},
         {"resumed_deliveries", std::to_string(resumed_deliveries)}});
    if (admin) {  // after the line above: tools read the API port from the first "listening on"
      auto aep = admin->local_endpoint();
      Log(LogLevel::kInfo, "admin listening on " + aep.address().to_string() + ":" + std::to_string(aep.port()));
    }

    std::vector<std::thread> pool;
    for (int i = 1; i < threads; ++i) pool.emplace_back([&] { ioc.run(); });
    ioc.run();
    for (auto& t : pool) t.join();
    // Completions still in the store's queues are posted to the stopped io_context, which
    // discards them with the rest of its work below.
    compute.join();
    store->Close();
    // Coroutines still suspended (idle connections, running nodes, waiting deliveries)
    // hold references to the objects of this block: destroy them while those still live.
    ioc.DestroyPendingWork();
  }
  Log(LogLevel::kInfo, "stopped");
  return 0;
}

int KeysCreate(int argc, char** argv) {
  std::string data, account, name;
  po::options_description desc("flowd keys create options");
  desc.add_options()
      ("data", po::value(&data)->required(), "data folder")
      ("account", po::value(&account)->default_value("default"), "account the key belongs to")
      ("name", po::value(&name)->default_value(""), "a label for the key")
      ("help", "this text");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: flowd keys create --data DIR [--account NAME] [--name NAME]\n"
                   "Creates an API key while the server is stopped; the key alone is the last line on stdout.\n\n"
                << desc;
      return 0;
    }
    po::notify(vm);
  } catch (const std::exception& e) {
    return Fail(std::string(e.what()) + "\n" + kUsage);
  }
  if (account.empty()) return Fail("--account must not be empty");
  std::string error;
  auto store = store::Store::Open({data, true}, &error);
  if (!store) return Fail("cannot open the data folder " + data + " (is flowd serve running on it?): " + error);
  std::string key = api::KeyRing::CreateSync(*store, account, name);
  if (key.empty()) return Fail("the store refused the write");
  std::cerr << "Created a key for account \"" << account << "\". It is shown once; keep it safe.\n";
  std::cout << key << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "--version" || cmd == "version") {
    std::cout << "flowd " << FLOWD_VERSION << "\n";
    return 0;
  }
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::cout << kUsage;
    return 0;
  }
  if (cmd == "serve") return Serve(argc - 1, argv + 1);
  if (cmd == "keys" && argc > 2 && std::string(argv[2]) == "create") return KeysCreate(argc - 2, argv + 2);
  std::cerr << (cmd.empty() ? "flowd: no command given\n" : "flowd: unknown command '" + cmd + "'\n") << kUsage;
  return 2;
}
