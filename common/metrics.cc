#include "common/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <initializer_list>

#include "common/logging.h"

namespace tandem {
namespace {

// Appends pieces (std::string_view: Debian's absl::StrAppend takes absl::string_view).
void Append(std::string* out, std::initializer_list<std::string_view> pieces) {
  for (std::string_view p : pieces) out->append(p);
}

void AtomicAdd(std::atomic<double>& a, double delta) {
  double old = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(old, old + delta, std::memory_order_relaxed)) {
  }
}

// Prometheus float syntax: shortest round-trip form, +Inf/-Inf/NaN.
std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, end);
}

std::string EscapeHelp(std::string_view help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

bool ValidName(std::string_view name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':');
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

// {a="x",b="y"} plus an optional extra pair (le for buckets); "" when empty.
std::string LabelSet(const std::vector<std::string>& names, const std::vector<std::string>& values,
                     std::string_view extra_name = {}, std::string_view extra_value = {}) {
  if (names.empty() && extra_name.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += ",";
    Append(&out, {names[i], "=\"", EscapeLabelValue(values[i]), "\""});
  }
  if (!extra_name.empty()) {
    if (!names.empty()) out += ",";
    Append(&out, {extra_name, "=\"", extra_value, "\""});
  }
  out += "}";
  return out;
}

void Header(std::string* out, std::string_view name, std::string_view help, std::string_view type) {
  Append(out, {"# HELP ", name, " ", EscapeHelp(help), "\n# TYPE ", name, " ", type, "\n"});
}

}  // namespace

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void Counter::Increment(double delta) {
  if (!(delta >= 0)) return;
  AtomicAdd(value_, delta);
}

void Gauge::Increment(double delta) { AtomicAdd(value_, delta); }

Histogram::Histogram(const std::vector<double>* bounds)
    : bounds_(bounds), buckets_(new std::atomic<uint64_t>[bounds->size() + 1]) {
  for (size_t i = 0; i <= bounds_->size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  // First bound >= value ("le" is inclusive); NaN lands in +Inf.
  const size_t i = std::isnan(value)
                       ? bounds_->size()
                       : std::lower_bound(bounds_->begin(), bounds_->end(), value) - bounds_->begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, value);
}

uint64_t Histogram::CumulativeCount(size_t i) const {
  uint64_t total = 0;
  for (size_t b = 0; b <= std::min(i, bounds_->size()); ++b)
    total += buckets_[b].load(std::memory_order_relaxed);
  return total;
}

MetricsRegistry::Entry* MetricsRegistry::FindOrAdd(std::string_view name, MetricType type,
                                                   const std::vector<std::string>& label_names,
                                                   bool* conflict) {
  *conflict = false;
  bool valid = ValidName(name, /*allow_colon=*/true);
  for (const std::string& l : label_names) valid = valid && ValidName(l, false) && l != "le";
  auto it = families_.find(name);
  if (it != families_.end() || !valid) {
    if (valid) {
      const Entry& e = it->second;
      const std::vector<std::string>* existing = e.type == MetricType::kCounter ? &e.counter->label_names()
                                                 : e.type == MetricType::kGauge ? &e.gauge->label_names()
                                                                                : &e.histogram->label_names();
      if (e.type == type && *existing == label_names) return &it->second;
    }
    LOG(ERROR) << "metric '" << name
               << (valid ? "' declared again with another type or labels"
                         : "' has an invalid name or label name")
               << "; its values will not be exported";
    *conflict = true;
    orphans_.push_back(Entry{.type = type});
    return &orphans_.back();
  }
  auto [inserted, ok] = families_.emplace(std::string(name), Entry{.type = type});
  return &inserted->second;
}

CounterFamily* MetricsRegistry::Counter(std::string_view name, std::string_view help,
                                        const std::vector<std::string>& label_names) {
  absl::MutexLock lock(&mu_);
  bool conflict = false;
  Entry* e = FindOrAdd(name, MetricType::kCounter, label_names, &conflict);
  if (e->counter == nullptr) {
    e->counter = std::make_unique<CounterFamily>(std::string(name), std::string(help), label_names,
                                                 MetricType::kCounter);
  }
  return e->counter.get();
}

GaugeFamily* MetricsRegistry::Gauge(std::string_view name, std::string_view help,
                                    const std::vector<std::string>& label_names) {
  absl::MutexLock lock(&mu_);
  bool conflict = false;
  Entry* e = FindOrAdd(name, MetricType::kGauge, label_names, &conflict);
  if (e->gauge == nullptr) {
    e->gauge =
        std::make_unique<GaugeFamily>(std::string(name), std::string(help), label_names, MetricType::kGauge);
  }
  return e->gauge.get();
}

HistogramFamily* MetricsRegistry::Histogram(std::string_view name, std::string_view help,
                                            const std::vector<std::string>& label_names,
                                            std::vector<double> bounds) {
  bounds.erase(std::remove_if(bounds.begin(), bounds.end(), [](double b) { return !std::isfinite(b); }),
               bounds.end());
  std::sort(bounds.begin(), bounds.end());
  bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
  absl::MutexLock lock(&mu_);
  bool conflict = false;
  Entry* e = FindOrAdd(name, MetricType::kHistogram, label_names, &conflict);
  if (e->histogram == nullptr) {
    e->histogram = std::make_unique<HistogramFamily>(std::string(name), std::string(help), label_names,
                                                     MetricType::kHistogram, std::move(bounds));
  }
  return e->histogram.get();
}

std::string MetricsRegistry::RenderPrometheus() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  // Not a structured binding: clang 14 (scripts/check_thread_safety.sh)
  // cannot capture one in the lambdas below.
  for (const auto& family : families_) {
    const auto& name = family.first;
    const auto& e = family.second;
    switch (e.type) {
      case MetricType::kCounter:
        Header(&out, name, e.counter->help(), "counter");
        e.counter->ForEach([&](const std::vector<std::string>& values, const tandem::Counter& c) {
          Append(&out, {name, LabelSet(e.counter->label_names(), values), " ", FormatValue(c.Value()), "\n"});
        });
        break;
      case MetricType::kGauge:
        Header(&out, name, e.gauge->help(), "gauge");
        e.gauge->ForEach([&](const std::vector<std::string>& values, const tandem::Gauge& g) {
          Append(&out, {name, LabelSet(e.gauge->label_names(), values), " ", FormatValue(g.Value()), "\n"});
        });
        break;
      case MetricType::kHistogram: {
        const HistogramFamily& f = *e.histogram;
        Header(&out, name, f.help(), "histogram");
        f.ForEach([&](const std::vector<std::string>& values, const tandem::Histogram& h) {
          // Read the buckets once so _count equals the +Inf bucket.
          uint64_t cumulative = 0;
          for (size_t i = 0; i <= f.bounds().size(); ++i) {
            cumulative = h.CumulativeCount(i);
            const std::string le = i < f.bounds().size() ? FormatValue(f.bounds()[i]) : "+Inf";
            Append(&out, {name, "_bucket", LabelSet(f.label_names(), values, "le", le), " ",
                          std::to_string(cumulative), "\n"});
          }
          const std::string labels = LabelSet(f.label_names(), values);
          Append(&out, {name, "_sum", labels, " ", FormatValue(h.Sum()), "\n"});
          Append(&out, {name, "_count", labels, " ", std::to_string(cumulative), "\n"});
        });
        break;
      }
    }
  }
  return out;
}

MetricsRegistry& DefaultMetricsRegistry() {
  static MetricsRegistry* registry = new MetricsRegistry();
  return *registry;
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> out;
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) out.push_back(v);
  return out;
}

std::vector<double> LinearBuckets(double start, double width, int count) {
  std::vector<double> out;
  for (int i = 0; i < count; ++i) out.push_back(start + width * i);
  return out;
}

}  // namespace tandem
