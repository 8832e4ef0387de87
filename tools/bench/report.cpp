// dmabufio-bench-report: turns the guest's raw lines into build/bench/results.json (design.md
// schema), a table of medians and ratios on stdout, and build/bench/iops.png (gnuplot).
//   dmabufio-bench-report OUTDIR MODE...
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

struct Key {
    std::string mode, buffers, rw;
    unsigned bs = 0, qd = 0;
    auto operator<=>(const Key&) const = default;  // NOLINT(modernize-use-nullptr): clang-tidy 14
};

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
const std::vector<std::string> kBuffers{"plain",  "fixed",     "dmabuf",
                                        "compat", "fio-fixed", "fio-dmabuf"};

// The MOVE comparison's runs (guest-matrix): "dmabuf-test" (no MOVE), "dmabuf-test-moveNms".
bool is_move_run(const std::string& buffers) { return buffers.rfind("dmabuf-test", 0) == 0; }
unsigned move_every_ms(const std::string& buffers) {
    const std::string prefix = "dmabuf-test-move";
    return buffers.rfind(prefix, 0) == 0
               ? static_cast<unsigned>(std::stoul(buffers.substr(prefix.size())))
               : 0;
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

// Median over repetitions of one extra field (0 if absent).
double median_of(const std::vector<Extras>& reps, const std::string& field) {
    std::vector<double> v;
    for (const auto& e : reps) {
        if (auto it = e.find(field); it != e.end()) {
            v.push_back(it->second);
        }
    }
    return median(v);
}

// Median over repetitions of QEMU CPU microseconds per I/O for one QEMU field: repetition i's
// QEMU seconds over the same repetition's I/O count.
double qemu_us_per_io(const std::vector<Extras>& runs, const std::vector<Extras>& q,
                      const std::string& field) {
    std::vector<double> v;
    for (std::size_t i = 0; i < std::min(runs.size(), q.size()); i++) {
        const auto ios = runs[i].find("ios");
        const auto s = q[i].find(field);
        if (ios != runs[i].end() && s != q[i].end() && ios->second > 0) {
            v.push_back(s->second / ios->second * 1e6);
        }
    }
    return median(v);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::cerr << "usage: dmabufio-bench-report OUTDIR MODE...\n";
        return 2;
    }
    const std::string dir = argv[1];
    const std::vector<std::string> modes(argv + 2, argv + argc);
    std::map<Key, std::vector<double>> runs;
    // Per key, per repetition (in order): the key=value extras of the raw lines, and QEMU's CPU
    // seconds for the same runs (qemu-MODE.txt, written on the host by tools/bench/qemu-cpu).
    std::map<Key, std::vector<Extras>> extras;
    std::map<Key, std::vector<Extras>> qemu;
    std::vector<std::pair<std::string, unsigned>> workloads;
    for (const auto& mode : modes) {
        std::string path = dir;
        path += "/raw-" + mode + ".txt";
        std::ifstream in(path);
        if (!in) {
            std::cerr << "dmabufio-bench-report: no results for " << mode << " in " << dir
                      << " (did the guest run fail?)\n";
            return 1;
        }
        std::string line;
        while (std::getline(in, line)) {
            std::istringstream ls(line);
            Key k;
            double iops = 0;
            if (!(ls >> k.mode >> k.buffers >> k.rw >> k.bs >> k.qd >> iops)) {
                continue;
            }
            runs[k].push_back(iops);
            extras[k].push_back(parse_extras(ls));
            if (is_move_run(k.buffers)) {
                continue;
            }
            if (std::find(workloads.begin(), workloads.end(), std::pair{k.rw, k.bs}) ==
                workloads.end()) {
                workloads.emplace_back(k.rw, k.bs);
            }
        }
        std::string qpath = dir;
        qpath += "/qemu-" + mode + ".txt";
        std::ifstream qin(qpath);
        while (std::getline(qin, line)) {
            std::istringstream ls(line);
            Key k;
            if (ls >> k.mode >> k.buffers >> k.rw >> k.bs >> k.qd) {
                qemu[k].push_back(parse_extras(ls));
            }
        }
    }
    std::string kernel = "unknown";
    if (std::ifstream kf(dir + "/kernel"); kf) {
        std::getline(kf, kernel);
    }

    std::ofstream json(dir + "/results.json");
    json << "{\"kernel\": \"" << kernel << "\", \"runs\": [";
    const char* sep = "\n  ";
    std::map<Key, double> med;
    auto cpu_fields = [&](const Key& k) {
        // Added fields (design.md's schema plus): medians of CPU microseconds per I/O.
        std::ostringstream f;
        const auto& ex = extras[k];
        const double cpu = median_of(ex, "cpu_us");
        if (cpu == 0) {
            return f.str();
        }
        f.setf(std::ios::fixed);
        f.precision(2);
        f << ", \"cpu_us_per_io_median\": " << cpu
          << ", \"sys_cpu_us_per_io_median\": " << median_of(ex, "sys_cpu_us");
        // IOMMU work per I/O (dmabufio-bench's tracepoint counters), median over repetitions.
        f.precision(4);
        for (const char* field :
             {"iommu_maps_per_io", "iommu_unmaps_per_io", "iotlb_invalidations_per_io"}) {
            if (!ex.empty() && ex.front().contains(field)) {
                f << ", \"" << field << "\": " << median_of(ex, field);
            }
        }
        f.precision(2);
        if (qemu.contains(k)) {
            f << ", \"qemu_cpu_us_per_io_median\": " << qemu_us_per_io(ex, qemu[k], "qemu_s")
              << ", \"qemu_vcpu_us_per_io_median\": " << qemu_us_per_io(ex, qemu[k], "vcpu_s")
              << ", \"qemu_main_us_per_io_median\": " << qemu_us_per_io(ex, qemu[k], "main_s")
              << ", \"qemu_other_us_per_io_median\": " << qemu_us_per_io(ex, qemu[k], "other_s");
        }
        return f.str();
    };
    auto iops_list = [](const std::vector<double>& v) {
        std::ostringstream f;
        for (std::size_t i = 0; i < v.size(); i++) {
            f << (i != 0 ? ", " : "") << static_cast<long long>(v[i]);
        }
        return f.str();
    };
    for (const auto& [k, v] : runs) {
        med[k] = median(v);
        if (is_move_run(k.buffers)) {
            continue;
        }
        json << sep << "{\"iommu\": \"" << k.mode << "\", \"buffers\": \"" << k.buffers
             << "\", \"rw\": \"" << k.rw << "\", \"bs\": " << k.bs << ", \"qd\": " << k.qd
             << ", \"iops\": [" << iops_list(v)
             << "], \"iops_median\": " << static_cast<long long>(med[k]) << cpu_fields(k) << "}";
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
             << move_every_ms(k.buffers) << ", \"rw\": \"" << k.rw << "\", \"bs\": " << k.bs
             << ", \"qd\": " << k.qd << ", \"iops\": [" << iops_list(v)
             << "], \"iops_median\": " << static_cast<long long>(med[k]) << cpu_fields(k);
        if (move_every_ms(k.buffers) != 0) {
            json << ", \"moves_median\": " << median_of(ex, "moves")
                 << ", \"remap_us_p50_median\": " << median_of(ex, "remap_p50")
                 << ", \"remap_us_p99_median\": " << median_of(ex, "remap_p99");
        }
        json << "}";
        sep = ",\n  ";
    }
    json << "\n]}\n";

    auto lookup = [&](const std::string& mode, const std::string& b, const std::string& rw,
                      unsigned bs) {
        for (const auto& [k, m] : med) {
            if (k.mode == mode && k.buffers == b && k.rw == rw && k.bs == bs) {
                return m;
            }
        }
        return 0.0;
    };
    std::ofstream dat(dir + "/iops.dat");
    std::printf("kernel %s; median IOPS of %zu interleaved repetitions\n", kernel.c_str(),
                runs.empty() ? 0 : runs.begin()->second.size());
    for (const auto& [rw, bs] : workloads) {
        std::printf("\n%s bs=%u %-10s", rw.c_str(), bs, "");
        for (const auto& m : modes) {
            std::printf("%12s", m.c_str());
        }
        std::printf("\n");
        for (const auto& b : kBuffers) {
            if (lookup(modes.front(), b, rw, bs) == 0) {
                continue;
            }
            std::printf("  %-25s", b.c_str());
            for (const auto& m : modes) {
                std::printf("%12.0f", lookup(m, b, rw, bs));
            }
            std::printf("\n");
            dat << '"' << rw << ' ' << bs / 1024 << "K " << b << '"';
            for (const auto& m : modes) {
                dat << ' ' << lookup(m, b, rw, bs);
            }
            dat << '\n';
        }
        const double fixed_pt = lookup("pt", "fixed", rw, bs);
        for (const auto& m : modes) {
            const double fixed = lookup(m, "fixed", rw, bs);
            const double fio = lookup(m, "fio-fixed", rw, bs);
            const double dma = lookup(m, "dmabuf", rw, bs);
            const double fio_dma = lookup(m, "fio-dmabuf", rw, bs);
            std::printf("  %-6s fixed/fio-fixed %.2f", m.c_str(), fio != 0 ? fixed / fio : 0.0);
            if (dma != 0 && fixed_pt != 0) {
                std::printf("   dmabuf/fixed(pt) %.2f", dma / fixed_pt);
            }
            // The goal: fio's dma-buf path within 10 % of dmabufio-bench's, in the same boot.
            if (dma != 0 && fio_dma != 0) {
                const double r = fio_dma / dma;
                std::printf("   fio-dmabuf/dmabuf %.2f%s", r,
                            r < 0.9 || r > 1.1 ? " (outside 10 %)" : "");
            }
            std::printf("\n");
        }
    }
    dat.close();

    // Where the time goes: CPU microseconds per I/O, guest-side (dmabufio-bench: this process's
    // getrusage, and the whole guest's /proc/stat busy time) and host-side (QEMU's threads).
    auto find_key = [&](const std::string& mode, const std::string& b, const std::string& rw,
                        unsigned bs) -> const Key* {
        for (const auto& [k, v] : runs) {
            if (k.mode == mode && k.buffers == b && k.rw == rw && k.bs == bs) {
                return &k;
            }
        }
        return nullptr;
    };
    bool cpu_header = false;
    for (const auto& [rw, bs] : workloads) {
        for (const auto& m : modes) {
            for (const auto& b : kBuffers) {
                const Key* k = find_key(m, b, rw, bs);
                if (k == nullptr || median_of(extras[*k], "cpu_us") == 0) {
                    continue;
                }
                if (!cpu_header) {
                    std::printf(
                        "\nCPU us per I/O (medians): guest bench process, whole guest; QEMU "
                        "process = vCPU threads + main loop (NVMe + VT-d DMA) + other; IOMMU "
                        "maps, unmaps and IOTLB invalidations per I/O (guest tracepoints)\n"
                        "  %-16s %-7s %-7s %9s %9s %9s %9s %9s %9s %7s %7s %7s\n",
                        "workload", "iommu", "buffers", "g-proc", "g-system", "qemu", "vcpu",
                        "main", "other", "maps", "unmaps", "iotlb");
                    cpu_header = true;
                }
                const auto& ex = extras[*k];
                const auto& q = qemu[*k];
                // IOMMU counts: "n/a" where the kernel had no tracepoints to count them with.
                auto per_io = [&](const char* field) {
                    std::array<char, 16> c{};
                    if (ex.empty() || !ex.front().contains(field)) {
                        return std::string("n/a");
                    }
                    std::snprintf(c.data(), c.size(), "%.3f", median_of(ex, field));
                    return std::string(c.data());
                };
                std::printf("  %-16s %-7s %-7s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %7s %7s %7s\n",
                            (rw + " " + std::to_string(bs / 1024) + "K").c_str(), m.c_str(),
                            b.c_str(), median_of(ex, "cpu_us"), median_of(ex, "sys_cpu_us"),
                            qemu_us_per_io(ex, q, "qemu_s"), qemu_us_per_io(ex, q, "vcpu_s"),
                            qemu_us_per_io(ex, q, "main_s"), qemu_us_per_io(ex, q, "other_s"),
                            per_io("iommu_maps_per_io").c_str(),
                            per_io("iommu_unmaps_per_io").c_str(),
                            per_io("iotlb_invalidations_per_io").c_str());
            }
        }
    }

    // Invalidation: test-exporter dma-buf, no MOVE vs a MOVE every N ms, interleaved.
    bool move_header = false;
    for (const auto& m : modes) {
        for (const auto& [k, v] : runs) {
            const unsigned every = move_every_ms(k.buffers);
            if (k.mode != m || every == 0) {
                continue;
            }
            const Key* base = find_key(m, "dmabuf-test", k.rw, k.bs);
            const double still = base != nullptr ? med.at(*base) : 0;
            if (!move_header) {
                std::printf(
                    "\n%s bs=%u qd=%u, test-exporter dma-buf: median IOPS without and with MOVE; "
                    "re-map latency (MOVE return -> first completion of a later I/O), median "
                    "over repetitions of each run's p50 and p99\n",
                    k.rw.c_str(), k.bs, k.qd);
                move_header = true;
            }
            const auto& ex = extras.at(k);
            std::printf(
                "  %-6s no-move %7.0f  move/%ums %7.0f  ratio %.2f  moves %4.0f  re-map p50 "
                "%8.1fus p99 %8.1fus\n",
                m.c_str(), still, every, med.at(k), still != 0 ? med.at(k) / still : 0.0,
                median_of(ex, "moves"), median_of(ex, "remap_p50"), median_of(ex, "remap_p99"));
        }
    }

    std::ofstream gp(dir + "/iops.gp");
    gp << "set terminal pngcairo size 1000,600 noenhanced\nset output '" << dir << "/iops.png'\n"
       << "set title 'dmabuf-io: median IOPS by buffer kind and IOMMU mode (" << kernel << ")'\n"
       << "set style data histograms\nset style histogram clustered gap 1\nset style fill solid "
          "0.8\n"
       << "set xtics rotate by -30\nset ylabel 'IOPS'\nset key top left\nset grid ytics\n"
       << "plot";
    for (std::size_t i = 0; i < modes.size(); i++) {
        gp << (i != 0 ? "," : "") << " '" << dir << "/iops.dat' using " << i + 2
           << (i == 0 ? ":xtic(1)" : "") << " title '" << modes[i] << "'";
    }
    gp << "\n";
    gp.close();
    const std::string cmd = "gnuplot '" + dir + "/iops.gp'";
    if (std::system(cmd.c_str()) != 0) {
        std::cerr << "dmabufio-bench-report: gnuplot failed; the table and results.json stand\n";
        return 1;
    }
    std::printf("\nwrote %s/results.json and %s/iops.png\n", dir.c_str(), dir.c_str());
    return 0;
}
