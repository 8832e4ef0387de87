// dmabufio-bench-report: turns the guest's raw lines into build/bench/results.json (design.md
// schema), a table of medians with their spread and ratios on stdout, and build/bench/iops.png
// (gnuplot: IOPS relative to fixed buffers, with min-max whiskers) and build/bench/sweep.png
// (dmabuf/fixed per workload and CPU per I/O).
//   dmabufio-bench-report OUTDIR MODE...
// Every row of OUTDIR/plan-MODE.txt (written by guest-matrix: every buffer kind, workload and
// MOVE run asked for) must have all its repetitions in OUTDIR/raw-MODE.txt: a row without a
// measurement, or with fewer repetitions than planned, is reported on stderr after the tables
// ("strict dmabuf randread 4K qd32: no measurement") and the exit status is 1.
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace {

// What a run does: its direction, block size, queue depth (per thread) and submitting threads.
struct Workload {
    std::string rw;
    unsigned bs = 0, qd = 0, jobs = 1;
    auto operator<=>(const Workload&) const = default;  // NOLINT(modernize-use-nullptr)
};

struct Key {
    std::string mode, buffers;
    Workload w;
    auto operator<=>(const Key&) const = default;  // NOLINT(modernize-use-nullptr): clang-tidy 14
};

// "randread 4K qd32", with " x2" for 2 threads.
std::string label(const Workload& w) {
    std::string s = w.rw + " " +
                    (w.bs >= 1024 * 1024 ? std::to_string(w.bs >> 20) + "M"
                                         : std::to_string(w.bs >> 10) + "K") +
                    " qd" + std::to_string(w.qd);
    return w.jobs > 1 ? s + " x" + std::to_string(w.jobs) : s;
}

std::string name(const Key& k) { return k.mode + " " + k.buffers + " " + label(k.w); }

// "mode buffers rw bs qd" at the start of a plan, raw or QEMU line.
bool read_key(std::istringstream& in, Key& k) {
    return static_cast<bool>(in >> k.mode >> k.buffers >> k.w.rw >> k.w.bs >> k.w.qd);
}

double median(std::vector<double> v) {
    if (v.empty()) {
        return 0;
    }
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 != 0 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// fio-fixed and fio-dmabuf: the patched fio (tools/fio/build), registered user memory and
// dmabuf=udmabuf (dmabufio-bench's default exporter), with the same batching.
// compat: the library's compat mode (O_DIRECT into host memory, copied into the dma-buf).
// fixed-2M and dmabuf-2M: fixed and dmabuf on 2 MiB hugetlb pages (dmabufio-bench --hugepages).
const std::vector<std::string> kBuffers{"plain",     "fixed",      "dmabuf",   "compat",
                                        "fio-fixed", "fio-dmabuf", "fixed-2M", "dmabuf-2M"};
// dmabuf against fixed buffers on the same kind of pages: the name suffix of both kinds.
const std::array<std::string, 2> kPageKinds{"", "-2M"};

// The MOVE comparison's runs (guest-matrix): "dmabuf-test" (no MOVE), "dmabuf-test-moveNms".
bool is_move_run(const std::string& buffers) { return buffers.rfind("dmabuf-test", 0) == 0; }
unsigned move_every_ms(const std::string& buffers) {
    const std::string prefix = "dmabuf-test-move";
    return buffers.rfind(prefix, 0) == 0
               ? static_cast<unsigned>(std::stoul(buffers.substr(prefix.size())))
               : 0;
}

// What backs each kind's buffers (guest-matrix, bench.cpp, lib/src, tools/fio/patches): all are
// 4 KiB pages where the guest kernel has no transparent huge pages (thp-MODE.txt, guest-matrix).
const std::map<std::string, std::string> kMemory{
    {"plain", "anonymous mmap, MADV_NOHUGEPAGE where the kernel has THP (dmabufio-bench)"},
    {"fixed",
     "anonymous mmap, MADV_NOHUGEPAGE where the kernel has THP (dmabufio-bench), registered"},
    {"dmabuf", "udmabuf over a sealed memfd (shmem pages)"},
    {"compat",
     "udmabuf over a sealed memfd; the I/O goes to the library's staging (anonymous mmap, no "
     "madvise), then is copied"},
    {"fio-fixed", "fio mem=mmap: anonymous mmap, registered"},
    {"fio-dmabuf", "fio dmabuf=udmabuf: udmabuf over a sealed memfd (shmem pages)"},
    {"fixed-2M",
     "anonymous mmap(MAP_HUGETLB), 2 MiB pages (dmabufio-bench --hugepages), registered"},
    {"dmabuf-2M",
     "udmabuf over a sealed hugetlbfs memfd, 2 MiB pages (dmabufio-bench --hugepages)"},
    {"dmabuf-test", "the test exporter's pages (alloc_page, order 0)"},
};

std::string memory_of(const std::string& buffers) {
    const auto it = kMemory.find(is_move_run(buffers) ? std::string("dmabuf-test") : buffers);
    return it != kMemory.end() ? it->second : "unknown";
}

using Extras = std::map<std::string, double>;

Extras parse_extras(std::istringstream& in) {
    Extras e;
    std::string kv;
    while (in >> kv) {
        const auto eq = kv.find('=');
        if (eq != std::string::npos) {
            try {
                e[kv.substr(0, eq)] = std::stod(kv.substr(eq + 1));
            } catch (const std::exception&) {
                // not a number: ignored
            }
        }
    }
    return e;
}

// One extra field's value in each repetition that has it.
std::vector<double> values_of(const std::vector<Extras>& reps, const std::string& field) {
    std::vector<double> v;
    for (const auto& e : reps) {
        if (auto it = e.find(field); it != e.end()) {
            v.push_back(it->second);
        }
    }
    return v;
}

// Median over repetitions of one extra field; none if no repetition has it.
std::optional<double> median_of(const std::vector<Extras>& reps, const std::string& field) {
    const auto v = values_of(reps, field);
    if (v.empty()) {
        return std::nullopt;
    }
    return median(v);
}

// The submitting threads of a raw or QEMU line (guest-matrix's jobs=; 1 where it has none).
unsigned jobs_of(const Extras& e) {
    const auto it = e.find("jobs");
    return it != e.end() ? static_cast<unsigned>(it->second) : 1;
}

// The repetition of a raw or QEMU line (guest-matrix's rep=), or its position where it has none.
double rep_of(const Extras& e, std::size_t index) {
    const auto it = e.find("rep");
    return it != e.end() ? it->second : static_cast<double>(index + 1);
}

// Median over repetitions of QEMU CPU microseconds per I/O for one QEMU field: repetition r's
// QEMU seconds over the same repetition's I/O count. None without QEMU samples (fio's runs).
std::optional<double> qemu_us_per_io(const std::vector<Extras>& runs, const std::vector<Extras>& q,
                                     const std::string& field) {
    std::vector<double> v;
    for (std::size_t i = 0; i < runs.size(); i++) {
        const auto ios = runs[i].find("ios");
        for (std::size_t j = 0; j < q.size(); j++) {
            if (rep_of(q[j], j) != rep_of(runs[i], i)) {
                continue;
            }
            const auto s = q[j].find(field);
            if (ios != runs[i].end() && s != q[j].end() && ios->second > 0) {
                v.push_back(s->second / ios->second * 1e6);
            }
            break;
        }
    }
    if (v.empty()) {
        return std::nullopt;
    }
    return median(v);
}

// DIR/PREFIXMODE.txt
std::string file(const std::string& dir, const char* prefix, const std::string& mode) {
    std::string path = dir;
    path += '/';
    path += prefix;
    path += mode;
    path += ".txt";
    return path;
}

std::string fixed(std::optional<double> v, int precision) {
    if (!v) {
        return "n/a";
    }
    std::array<char, 32> b{};
    std::snprintf(b.data(), b.size(), "%.*f", precision, *v);
    return b.data();
}

// "18196 (17010-18900)": the median and the min-max over repetitions; "missing" without any.
std::string spread(const std::vector<double>& v) {
    if (v.empty()) {
        return "missing";
    }
    const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    std::array<char, 64> b{};
    std::snprintf(b.data(), b.size(), "%.0f (%.0f-%.0f)", median(v), *lo, *hi);
    return b.data();
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::cerr << "usage: dmabufio-bench-report OUTDIR MODE...\n";
        return 2;
    }
    const std::string dir = argv[1];
    const std::vector<std::string> modes(argv + 2, argv + argc);
    // Per key, one entry per repetition in the raw file's order: IOPS, the key=value extras of the
    // raw lines, and QEMU's CPU seconds for the same runs (qemu-MODE.txt, written on the host by
    // tools/bench/qemu-cpu).
    std::map<Key, std::vector<double>> runs;
    std::map<Key, std::vector<Extras>> extras;
    std::map<Key, std::vector<Extras>> qemu;
    // What guest-matrix was asked to run (plan-MODE.txt), in its order, with the repetitions.
    std::vector<std::pair<Key, unsigned>> plan;
    std::vector<Workload> workloads;
    for (const auto& mode : modes) {
        std::ifstream pin(file(dir, "plan-", mode));
        if (!pin) {
            std::cerr << "dmabufio-bench-report: no plan-" << mode << ".txt in " << dir
                      << " (guest-matrix writes it first: did the guest run start?)\n";
            return 1;
        }
        std::string line;
        while (std::getline(pin, line)) {
            std::istringstream ls(line);
            Key k;
            unsigned reps = 0;
            if (!read_key(ls, k) || !(ls >> reps)) {
                continue;
            }
            if (!(ls >> k.w.jobs)) {
                k.w.jobs = 1;
            }
            plan.emplace_back(k, reps);
            if (!is_move_run(k.buffers) &&
                std::find(workloads.begin(), workloads.end(), k.w) == workloads.end()) {
                workloads.push_back(k.w);
            }
        }
        std::ifstream in(file(dir, "raw-", mode));
        if (!in) {
            std::cerr << "dmabufio-bench-report: no results for " << mode << " in " << dir
                      << " (did the guest run fail?)\n";
            return 1;
        }
        while (std::getline(in, line)) {
            std::istringstream ls(line);
            Key k;
            double iops = 0;
            if (!read_key(ls, k) || !(ls >> iops)) {
                continue;
            }
            auto e = parse_extras(ls);
            k.w.jobs = jobs_of(e);
            runs[k].push_back(iops);
            extras[k].push_back(std::move(e));
        }
        std::ifstream qin(file(dir, "qemu-", mode));
        while (std::getline(qin, line)) {
            std::istringstream ls(line);
            Key k;
            if (read_key(ls, k)) {
                auto e = parse_extras(ls);
                k.w.jobs = jobs_of(e);
                qemu[k].push_back(std::move(e));
            }
        }
    }
    std::string kernel = "unknown";
    if (std::ifstream kf(dir + "/kernel"); kf) {
        std::getline(kf, kernel);
    }
    // Transparent huge pages in each boot's guest (guest-matrix's thp-MODE.txt).
    std::map<std::string, std::string> thp;
    for (const auto& mode : modes) {
        std::string t = "unknown";
        if (std::ifstream tf(file(dir, "thp-", mode)); tf) {
            std::getline(tf, t);
        }
        thp[mode] = t;
    }

    // Rows asked for but not (fully) measured, and measurements nobody asked for.
    std::vector<std::string> problems;
    unsigned reps_planned = 0;
    for (const auto& [k, reps] : plan) {
        reps_planned = std::max(reps_planned, reps);
        const auto it = runs.find(k);
        const std::size_t n = it != runs.end() ? it->second.size() : 0;
        if (n == 0) {
            problems.push_back(name(k) + ": no measurement");
        } else if (n != reps) {
            problems.push_back(name(k) + ": " + std::to_string(n) + " of " + std::to_string(reps) +
                               " repetitions measured");
        }
    }
    for (const auto& run : runs) {
        const Key& k = run.first;
        if (std::none_of(plan.begin(), plan.end(), [&k](const auto& p) { return p.first == k; })) {
            problems.push_back(name(k) + ": measured, but not in plan-" + k.mode + ".txt");
        }
    }
    auto planned = [&](const std::string& b, const Workload& w) {
        return std::any_of(plan.begin(), plan.end(),
                           [&](const auto& p) { return p.first.buffers == b && p.first.w == w; });
    };
    auto find_key = [&](const std::string& mode, const std::string& b,
                        const Workload& w) -> const Key* {
        const auto it = runs.find(Key{mode, b, w});
        return it != runs.end() ? &it->first : nullptr;
    };
    const std::vector<double> kNone;
    const std::vector<Extras> kNoExtras;
    auto series = [&](const std::string& mode, const std::string& b,
                      const Workload& w) -> const std::vector<double>& {
        const Key* k = find_key(mode, b, w);
        return k != nullptr ? runs.at(*k) : kNone;
    };
    auto extras_of = [&](const std::string& mode, const std::string& b,
                         const Workload& w) -> const std::vector<Extras>& {
        const Key* k = find_key(mode, b, w);
        return k != nullptr ? extras.at(*k) : kNoExtras;
    };
    // The median IOPS of a row; 0 where it has no measurement.
    auto lookup = [&](const std::string& mode, const std::string& b, const Workload& w) {
        return median(series(mode, b, w));
    };
    // Row A over row B in one boot: each repetition's pair (the same rep=), for the spread.
    auto paired = [&](const std::string& mode, const std::string& a, const std::string& b,
                      const Workload& w) {
        std::vector<double> r;
        const auto& va = series(mode, a, w);
        const auto& vb = series(mode, b, w);
        const auto& ea = extras_of(mode, a, w);
        const auto& eb = extras_of(mode, b, w);
        for (std::size_t i = 0; i < va.size(); i++) {
            for (std::size_t j = 0; j < vb.size(); j++) {
                if (rep_of(ea[i], i) == rep_of(eb[j], j) && vb[j] != 0) {
                    r.push_back(va[i] / vb[j]);
                    break;
                }
            }
        }
        return r;
    };

    std::ofstream json(dir + "/results.json");
    json << "{\"kernel\": \"" << kernel << "\", \"repetitions\": " << reps_planned
         << ", \"complete\": " << (problems.empty() ? "true" : "false") << ", \"missing\": [";
    for (std::size_t i = 0; i < problems.size(); i++) {
        json << (i != 0 ? ", " : "") << '"' << problems[i] << '"';
    }
    json << "], \"thp\": {";
    for (std::size_t i = 0; i < modes.size(); i++) {
        json << (i != 0 ? ", " : "") << '"' << modes[i] << "\": \"" << thp[modes[i]] << '"';
    }
    json << "}, \"runs\": [";
    const char* sep = "\n  ";
    auto cpu_fields = [&](const Key& k) {
        // Added fields (design.md's schema plus): medians of CPU microseconds per I/O, each only
        // where the rows have it (fio's rows: no whole-guest or QEMU CPU).
        std::ostringstream f;
        const auto& ex = extras[k];
        f.setf(std::ios::fixed);
        f.precision(2);
        for (const auto& [field, key] : {std::pair{"cpu_us", "cpu_us_per_io_median"},
                                         std::pair{"sys_cpu_us", "sys_cpu_us_per_io_median"}}) {
            if (const auto v = median_of(ex, field)) {
                f << ", \"" << key << "\": " << *v;
            }
        }
        // IOMMU work and plugged batches per I/O (dmabufio-bench's tracepoint counters), median
        // over repetitions.
        f.precision(4);
        for (const char* field : {"iommu_maps_per_io", "iommu_unmaps_per_io",
                                  "iotlb_invalidations_per_io", "plug_batches_per_io"}) {
            if (const auto v = median_of(ex, field)) {
                f << ", \"" << field << "\": " << *v;
            }
        }
        f.precision(2);
        for (const auto& [field, key] : {std::pair{"qemu_s", "qemu_cpu_us_per_io_median"},
                                         std::pair{"vcpu_s", "qemu_vcpu_us_per_io_median"},
                                         std::pair{"main_s", "qemu_main_us_per_io_median"},
                                         std::pair{"other_s", "qemu_other_us_per_io_median"}}) {
            if (const auto v = qemu_us_per_io(ex, qemu[k], field)) {
                f << ", \"" << key << "\": " << *v;
            }
        }
        return f.str();
    };
    auto iops_fields = [](const std::vector<double>& v) {
        std::ostringstream f;
        f << "\"iops\": [";
        for (std::size_t i = 0; i < v.size(); i++) {
            f << (i != 0 ? ", " : "") << static_cast<long long>(v[i]);
        }
        const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
        f << "], \"iops_median\": " << static_cast<long long>(median(v))
          << ", \"iops_min\": " << static_cast<long long>(*lo)
          << ", \"iops_max\": " << static_cast<long long>(*hi);
        return f.str();
    };
    for (const auto& [k, v] : runs) {
        if (is_move_run(k.buffers)) {
            continue;
        }
        json << sep << "{\"iommu\": \"" << k.mode << "\", \"buffers\": \"" << k.buffers
             << "\", \"rw\": \"" << k.w.rw << "\", \"bs\": " << k.w.bs << ", \"qd\": " << k.w.qd
             << ", \"jobs\": " << k.w.jobs << ", " << iops_fields(v) << ", \"memory\": \""
             << memory_of(k.buffers) << '"' << cpu_fields(k) << "}";
        sep = ",\n  ";
    }
    // The MOVE comparison: its own list, so that "runs" keeps design.md's buffer kinds (and fio's).
    json << "\n], \"move_runs\": [";
    sep = "\n  ";
    for (const auto& [k, v] : runs) {
        if (!is_move_run(k.buffers)) {
            continue;
        }
        const auto& ex = extras[k];
        json << sep << "{\"iommu\": \"" << k.mode
             << "\", \"buffers\": \"dmabuf\", \"exporter\": \"test\", \"move_every_ms\": "
             << move_every_ms(k.buffers) << ", \"rw\": \"" << k.w.rw << "\", \"bs\": " << k.w.bs
             << ", \"qd\": " << k.w.qd << ", " << iops_fields(v) << ", \"memory\": \""
             << memory_of(k.buffers) << '"' << cpu_fields(k);
        if (move_every_ms(k.buffers) != 0) {
            json << ", \"moves_median\": " << fixed(median_of(ex, "moves"), 0)
                 << ", \"remap_us_p50_median\": " << fixed(median_of(ex, "remap_p50"), 1)
                 << ", \"remap_us_p99_median\": " << fixed(median_of(ex, "remap_p99"), 1)
                 << ", \"map_us_mean_median\": " << fixed(median_of(ex, "map_us"), 1)
                 << ", \"exporter_remap_us_mean_median\": " << fixed(median_of(ex, "xremap_us"), 1);
        }
        json << "}";
        sep = ",\n  ";
    }
    json << "\n]}\n";
    json.close();

    std::printf(
        "kernel %s; median IOPS (min-max) of %u interleaved repetitions, the order of the kinds "
        "rotated per repetition\n",
        kernel.c_str(), reps_planned);
    std::printf("memory (transparent huge pages in the guest:");
    for (const auto& m : modes) {
        std::printf(" %s %s;", m.c_str(), thp[m].c_str());
    }
    std::printf(" without them every kind but the -2M ones is on 4 KiB pages):\n");
    for (const auto& b : kBuffers) {
        std::printf("  %-12s %s\n", b.c_str(), memory_of(b).c_str());
    }
    std::printf("  %-12s %s\n", "MOVE runs", memory_of("dmabuf-test").c_str());
    // A workload with more kinds than fixed and dmabuf (the main ones; the sweep's have only
    // those two): a block of every kind's IOPS and the ratios to the outside baselines.
    auto wide = [&](const Workload& w) {
        return std::any_of(kBuffers.begin(), kBuffers.end(), [&](const std::string& b) {
            return b != "fixed" && b != "dmabuf" && planned(b, w);
        });
    };
    const bool have_pt = std::find(modes.begin(), modes.end(), "pt") != modes.end();
    for (const auto& w : workloads) {
        if (!wide(w)) {
            continue;
        }
        std::printf("\n%-24s", label(w).c_str());
        for (const auto& m : modes) {
            std::printf("%22s", m.c_str());
        }
        std::printf("\n");
        for (const auto& b : kBuffers) {
            if (!planned(b, w)) {
                continue;
            }
            std::printf("  %-22s", b.c_str());
            for (const auto& m : modes) {
                std::printf("%22s", spread(series(m, b, w)).c_str());
            }
            std::printf("\n");
        }
        const double fixed_pt = lookup("pt", "fixed", w);
        auto ratio = [](double a, double b) {
            return a != 0 && b != 0 ? std::optional<double>(a / b) : std::nullopt;
        };
        for (const auto& m : modes) {
            const double fixed_m = lookup(m, "fixed", w);
            const double dma = lookup(m, "dmabuf", w);
            std::printf("  %-6s fixed/fio-fixed %s", m.c_str(),
                        fixed(ratio(fixed_m, lookup(m, "fio-fixed", w)), 2).c_str());
            if (have_pt) {
                std::printf("   dmabuf/fixed(pt, cross-boot) %s",
                            fixed(ratio(dma, fixed_pt), 2).c_str());
            }
            // The goal: fio's dma-buf path within 10 % of dmabufio-bench's, in the same boot.
            const auto r = ratio(lookup(m, "fio-dmabuf", w), dma);
            std::printf("   fio-dmabuf/dmabuf %s%s\n", fixed(r, 2).c_str(),
                        r && (*r < 0.9 || *r > 1.1) ? " (outside 10 %)" : "");
        }
    }

    // dmabuf against fixed buffers in every workload (the sweep's included), within each boot:
    // the IOPS ratio with the min-max of the repetitions' own pairs, and the whole guest's CPU per
    // I/O for each.
    // Medians A over B and the min-max of the pairs; none without pairs.
    auto ratio_of = [](const std::vector<double>& pairs, double a,
                       double b) -> std::optional<std::array<double, 3>> {
        if (pairs.empty() || a == 0 || b == 0) {
            return std::nullopt;
        }
        const auto [lo, hi] = std::minmax_element(pairs.begin(), pairs.end());
        return std::array<double, 3>{a / b, *lo, *hi};
    };
    auto ratio_spread = [&](const std::vector<double>& pairs, double a, double b) -> std::string {
        const auto r = ratio_of(pairs, a, b);
        if (!r) {
            return "n/a";
        }
        std::array<char, 48> buf{};
        std::snprintf(buf.data(), buf.size(), "%.2f (%.2f-%.2f)", (*r)[0], (*r)[1], (*r)[2]);
        return buf.data();
    };
    std::printf(
        "\ndmabuf against fixed buffers, each boot on its own: IOPS dmabuf/fixed (min-max of each "
        "repetition's pair), and the whole guest's CPU us per I/O, fixed -> dmabuf (medians)\n"
        "  %-22s",
        "workload");
    for (const auto& m : modes) {
        std::printf("  %-33s", m.c_str());
    }
    std::printf("\n");
    for (const auto& w : workloads) {
        for (const auto& pages : kPageKinds) {
            const std::string dma = "dmabuf" + pages;
            const std::string fix = "fixed" + pages;
            if (!planned(dma, w)) {
                continue;
            }
            std::printf("  %-22s", (label(w) + pages).c_str());
            for (const auto& m : modes) {
                const auto cell =
                    ratio_spread(paired(m, dma, fix, w), lookup(m, dma, w), lookup(m, fix, w)) +
                    " " + fixed(median_of(extras_of(m, fix, w), "sys_cpu_us"), 1) + "->" +
                    fixed(median_of(extras_of(m, dma, w), "sys_cpu_us"), 1);
                std::printf("  %-33s", cell.c_str());
            }
            std::printf("\n");
        }
    }

    // Where the time goes: CPU microseconds per I/O, guest-side (dmabufio-bench: this process's
    // getrusage, and the whole guest's /proc/stat busy time; fio: its job process's) and host-side
    // (QEMU's threads, for dmabufio-bench's runs); n/a where a row has no such number.
    // The main workloads' every kind (the sweep's are in the table above).
    bool cpu_header = false;
    for (const auto& w : workloads) {
        if (!wide(w)) {
            continue;
        }
        for (const auto& m : modes) {
            for (const auto& b : kBuffers) {
                const Key* k = find_key(m, b, w);
                if (k == nullptr || !median_of(extras[*k], "cpu_us")) {
                    continue;
                }
                if (!cpu_header) {
                    std::printf(
                        "\nCPU us per I/O (medians): guest bench process (fio: its job process), "
                        "whole guest; QEMU process = vCPU threads + main loop (NVMe + VT-d DMA) + "
                        "other; IOMMU maps, unmaps and IOTLB invalidations per I/O (guest "
                        "tracepoints)\n"
                        "  %-18s %-7s %-10s %9s %9s %9s %9s %9s %9s %7s %7s %7s\n",
                        "workload", "iommu", "buffers", "g-proc", "g-system", "qemu", "vcpu",
                        "main", "other", "maps", "unmaps", "iotlb");
                    cpu_header = true;
                }
                const auto& ex = extras[*k];
                const auto& q = qemu[*k];
                std::printf("  %-18s %-7s %-10s %9s %9s %9s %9s %9s %9s %7s %7s %7s\n",
                            label(w).c_str(), m.c_str(), b.c_str(),
                            fixed(median_of(ex, "cpu_us"), 1).c_str(),
                            fixed(median_of(ex, "sys_cpu_us"), 1).c_str(),
                            fixed(qemu_us_per_io(ex, q, "qemu_s"), 1).c_str(),
                            fixed(qemu_us_per_io(ex, q, "vcpu_s"), 1).c_str(),
                            fixed(qemu_us_per_io(ex, q, "main_s"), 1).c_str(),
                            fixed(qemu_us_per_io(ex, q, "other_s"), 1).c_str(),
                            fixed(median_of(ex, "iommu_maps_per_io"), 3).c_str(),
                            fixed(median_of(ex, "iommu_unmaps_per_io"), 3).c_str(),
                            fixed(median_of(ex, "iotlb_invalidations_per_io"), 3).c_str());
            }
        }
    }

    // Invalidation: test-exporter dma-buf, no MOVE vs a MOVE every N ms, interleaved; the ratio's
    // spread from the repetitions' own pairs (the same rep= in one boot).
    bool move_header = false;
    for (const auto& m : modes) {
        for (const auto& [k, reps] : plan) {
            const unsigned every = move_every_ms(k.buffers);
            if (k.mode != m || every == 0) {
                continue;
            }
            if (!move_header) {
                std::printf(
                    "\n%s, test-exporter dma-buf: median IOPS (min-max) without and "
                    "with MOVE, their ratio (min-max of each repetition's pair); re-map latency "
                    "(MOVE return -> first completion of a later I/O), median over repetitions of "
                    "each run's p50 and p99, next to the no-MOVE run's I/O latency p50 and p99 "
                    "(an I/O issued after a MOVE waits behind the queue depth's I/O as any does); "
                    "the exporter's mean map time and mean time from a "
                    "move's end to the end of the re-map (debugfs dmabuf_test), medians over "
                    "repetitions\n",
                    label(k.w).c_str());
                move_header = true;
            }
            const auto& still = series(m, "dmabuf-test", k.w);
            const auto& moving = series(m, k.buffers, k.w);
            const std::string ratio = ratio_spread(paired(m, k.buffers, "dmabuf-test", k.w),
                                                   median(moving), median(still));
            const auto& ex = extras_of(m, k.buffers, k.w);
            std::printf(
                "  %-6s no-move %19s  move/%ums %19s  ratio %-17s  moves %4s  re-map p50 %8sus "
                "p99 %8sus  (I/O p50 %8sus p99 %8sus)  map %6sus  move end to re-mapped "
                "%6sus\n",
                m.c_str(), spread(still).c_str(), every, spread(moving).c_str(), ratio.c_str(),
                fixed(median_of(ex, "moves"), 0).c_str(),
                fixed(median_of(ex, "remap_p50"), 1).c_str(),
                fixed(median_of(ex, "remap_p99"), 1).c_str(),
                fixed(median_of(extras_of(m, "dmabuf-test", k.w), "lat_p50"), 1).c_str(),
                fixed(median_of(extras_of(m, "dmabuf-test", k.w), "lat_p99"), 1).c_str(),
                fixed(median_of(ex, "map_us"), 0).c_str(),
                fixed(median_of(ex, "xremap_us"), 0).c_str());
        }
    }

    // Aggregate bandwidth into one dma-buf (guest-matrix's agg-* rows): 1 MiB sequential reads
    // from 1, 2 and 4 NVMe striped by dmabufio-bench (agg-nvmeN), through md raid0 (agg-mdN), and
    // from a file on ext4 (agg-ext4); MB/s median (min-max) and the median over one NVMe's
    // (agg-nvme1) in the same boot. mb_per_s: a row's MB/s per repetition (also the vram-* rows').
    const auto mb_per_s = [&](const std::string& m, const std::string& b, const Workload& w) {
        std::vector<double> v = series(m, b, w);
        for (double& x : v) {
            x = x * static_cast<double>(w.bs) / 1e6;
        }
        return v;
    };
    bool agg_header = false;
    for (const auto& m : modes) {
        // One NVMe's median in this boot, the rows' reference.
        std::optional<double> one;
        for (const auto& [k, reps] : plan) {
            if (k.mode == m && k.buffers == "agg-nvme1" && !series(m, k.buffers, k.w).empty()) {
                one = median(mb_per_s(m, k.buffers, k.w));
            }
        }
        for (const auto& [k, reps] : plan) {
            if (k.mode != m || k.buffers.rfind("agg-", 0) != 0) {
                continue;
            }
            if (!agg_header) {
                std::printf(
                    "\nAggregate sequential read bandwidth into one dma-buf (udmabuf), 1 MiB "
                    "reads, "
                    "depth 16 per NVMe: MB/s median (min-max), and over one NVMe's (agg-nvme1) in "
                    "the same boot. agg-nvmeN: N NVMe, a registration each, striped by "
                    "dmabufio-bench; agg-mdN: md raid0 over N NVMe, one registration; agg-ext4: a "
                    "file on ext4 on one NVMe\n");
                agg_header = true;
            }
            const auto v = mb_per_s(m, k.buffers, k.w);
            std::string over = "n/a";
            if (!v.empty() && one && *one != 0) {
                over = fixed(median(v) / *one, 2) + "x";
            }
            std::printf("  %-6s %-10s %-16s %22s MB/s  %s\n", m.c_str(), k.buffers.c_str(),
                        label(k.w).c_str(), spread(v).c_str(), over.c_str());
        }
    }

    // NVMe -> VRAM (guest-matrix's vram-* rows): sequential reads into the test exporter's
    // device memory, registered (vram-dmabuf) against O_DIRECT into host memory and a copy into
    // the BAR (vram-compat), their ratio from each repetition's pair; and the rate kept with an
    // eviction or a restore every 10 ms (vram-evict10ms over vram-dmabuf, the same pairing).
    bool vram_header = false;
    for (const auto& m : modes) {
        for (const auto& [k, reps] : plan) {
            if (k.mode != m || k.buffers != "vram-dmabuf") {
                continue;
            }
            if (!vram_header) {
                std::printf(
                    "\nNVMe -> VRAM (the test exporter's device memory, a PCI BAR, peer-to-peer), "
                    "sequential reads at depth 8: MB/s median (min-max) into a registered VRAM "
                    "dma-buf (vram-dmabuf) and through host memory, O_DIRECT then a copy into the "
                    "BAR (vram-compat), their ratio (min-max of the repetitions' pairs); evicted "
                    "and restored in turn every 10 ms (vram-evict10ms) and the rate kept\n");
                vram_header = true;
            }
            const auto dma = mb_per_s(m, "vram-dmabuf", k.w);
            const auto bounce = mb_per_s(m, "vram-compat", k.w);
            std::printf("  %-6s %-16s dmabuf %20s  bounce %20s MB/s  ratio %s\n", m.c_str(),
                        label(k.w).c_str(), spread(dma).c_str(), spread(bounce).c_str(),
                        ratio_spread(paired(m, "vram-dmabuf", "vram-compat", k.w), median(dma),
                                     median(bounce))
                            .c_str());
            const Key evict_key{m, "vram-evict10ms", k.w};
            if (std::any_of(plan.begin(), plan.end(),
                            [&](const auto& p) { return p.first == evict_key; })) {
                const auto evict = mb_per_s(m, "vram-evict10ms", k.w);
                std::printf("  %-6s %-16s evicted/restored every 10 ms %20s MB/s  kept %s\n",
                            m.c_str(), label(k.w).c_str(), spread(evict).c_str(),
                            ratio_spread(paired(m, "vram-evict10ms", "vram-dmabuf", k.w),
                                         median(evict), median(dma))
                                .c_str());
            }
        }
    }

    // The plots. iops.png: the main workloads' kinds, IOPS over fixed buffers' median in
    // passthrough (in the same boot where passthrough was not run). sweep.png: every workload,
    // dmabuf/fixed in each boot (the repetitions' pairs), and the whole guest's CPU per I/O for
    // both. Median bars, min-max whiskers.
    auto bar = [](std::ostream& out, const std::vector<double>& v, double ref) {
        if (v.empty() || ref == 0) {
            out << " ? ? ?";
            return;
        }
        const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
        out << ' ' << median(v) / ref << ' ' << *lo / ref << ' ' << *hi / ref;
    };
    std::ofstream dat(dir + "/iops.dat");
    for (const auto& w : workloads) {
        for (const auto& b : kBuffers) {
            if (!wide(w) || !planned(b, w)) {
                continue;
            }
            dat << '"' << label(w) << ' ' << b << '"';
            for (const auto& m : modes) {
                bar(dat, series(m, b, w), lookup(have_pt ? "pt" : m, "fixed", w));
            }
            dat << '\n';
        }
    }
    dat.close();
    std::ofstream sdat(dir + "/sweep.dat");
    for (const auto& w : workloads) {
        for (const auto& pages : kPageKinds) {
            const std::string dma = "dmabuf" + pages;
            const std::string fix = "fixed" + pages;
            if (!planned(dma, w)) {
                continue;
            }
            sdat << '"' << label(w) << pages << '"';
            for (const auto& m : modes) {
                const auto r =
                    ratio_of(paired(m, dma, fix, w), lookup(m, dma, w), lookup(m, fix, w));
                if (r) {
                    sdat << ' ' << (*r)[0] << ' ' << (*r)[1] << ' ' << (*r)[2];
                } else {
                    sdat << " ? ? ?";
                }
            }
            for (const auto& m : modes) {
                for (const auto& b : {fix, dma}) {
                    bar(sdat, values_of(extras_of(m, b, w), "sys_cpu_us"), 1);
                }
            }
            sdat << '\n';
        }
    }
    sdat.close();
    std::ofstream gp(dir + "/iops.gp");
    const std::string common =
        "set style data histograms\nset style histogram errorbars gap 1 lw 1\n"
        "set style fill solid 0.8\nset datafile missing '?'\nset xtics rotate by -30\n"
        "set rmargin 16\nset key top left\nset grid ytics\n";
    gp << "set terminal pngcairo size 1100,600 noenhanced\nset output '" << dir << "/iops.png'\n"
       << "set title \"dmabuf-io: IOPS / fixed buffers' median IOPS "
       << (have_pt ? "in passthrough" : "in the same boot") << " (" << kernel
       << ")\\nbars: median; whiskers: min-max over " << reps_planned << " repetitions\"\n"
       << common << "set ylabel 'IOPS / fixed" << (have_pt ? " (pt)" : "")
       << "'\nset yrange [0:*]\n"
       << "set arrow from graph 0, first 1 to graph 1, first 1 nohead dashtype 2\n"
       << "plot";
    // One "'DAT' using c:c+1:c+2 title T" per title, three columns each from column FIRST
    // (median, min, max), the first one also naming the x tics.
    auto plot = [&](const char* dat, std::size_t first, const std::vector<std::string>& titles) {
        for (std::size_t i = 0; i < titles.size(); i++) {
            const std::size_t c = first + 3 * i;
            gp << (i != 0 ? "," : "") << " '" << dir << '/' << dat << "' using " << c << ':'
               << c + 1 << ':' << c + 2 << (i == 0 ? ":xtic(1)" : "") << " title '" << titles[i]
               << "'";
        }
    };
    plot("iops.dat", 2, modes);
    gp << "\nunset arrow\nset terminal pngcairo size 1400,1000 noenhanced\nset output '" << dir
       << "/sweep.png'\nset multiplot layout 2,1\nset title \"dmabuf / fixed buffers' IOPS, "
          "each boot on its own ("
       << kernel << ")\\nbars: median; whiskers: min-max of the repetitions' pairs\"\n"
       << common << "set ylabel 'IOPS dmabuf / fixed'\nset yrange [0:*]\n"
       << "set arrow from graph 0, first 1 to graph 1, first 1 nohead dashtype 2\nplot";
    plot("sweep.dat", 2, modes);
    gp << "\nunset arrow\nset title \"the whole guest's CPU us per I/O (log scale)\\nbars: "
          "median; whiskers: min-max\"\nset ylabel 'CPU us per I/O'\nset logscale y\n"
          "set yrange [*:*]\nplot";
    std::vector<std::string> cpu_titles;
    for (const auto& m : modes) {
        cpu_titles.push_back(m + " fixed");
        cpu_titles.push_back(m + " dmabuf");
    }
    plot("sweep.dat", 3 * modes.size() + 2, cpu_titles);
    gp << "\nunset multiplot\n";
    gp.close();
    const std::string cmd = "gnuplot '" + dir + "/iops.gp'";
    const bool plotted = std::system(cmd.c_str()) == 0;
    if (plotted) {
        std::printf("\nwrote %s/results.json, %s/iops.png and %s/sweep.png\n", dir.c_str(),
                    dir.c_str(), dir.c_str());
    } else {
        std::cerr << "dmabufio-bench-report: gnuplot failed; the table and results.json stand\n";
    }
    if (!problems.empty()) {
        std::fflush(stdout);
        std::cerr << "dmabufio-bench-report: incomplete: " << problems.size()
                  << " planned row(s) not fully measured:\n";
        for (const auto& p : problems) {
            std::cerr << "  " << p << "\n";
        }
        return 1;
    }
    return plotted ? 0 : 1;
}
