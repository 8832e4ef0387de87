// dmabufio-bench-report: turns the guest's raw lines into build/bench/results.json (design.md
// schema), a table of medians and ratios on stdout, and build/bench/iops.png (gnuplot).
//   dmabufio-bench-report OUTDIR MODE...
#include <algorithm>
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

const std::vector<std::string> kBuffers{"plain", "fixed", "dmabuf", "fio-fixed"};

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::cerr << "usage: dmabufio-bench-report OUTDIR MODE...\n";
        return 2;
    }
    const std::string dir = argv[1];
    const std::vector<std::string> modes(argv + 2, argv + argc);
    std::map<Key, std::vector<double>> runs;
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
        Key k;
        double iops = 0;
        while (in >> k.mode >> k.buffers >> k.rw >> k.bs >> k.qd >> iops) {
            runs[k].push_back(iops);
            if (std::find(workloads.begin(), workloads.end(), std::pair{k.rw, k.bs}) ==
                workloads.end()) {
                workloads.emplace_back(k.rw, k.bs);
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
    for (const auto& [k, v] : runs) {
        med[k] = median(v);
        json << sep << "{\"iommu\": \"" << k.mode << "\", \"buffers\": \"" << k.buffers
             << "\", \"rw\": \"" << k.rw << "\", \"bs\": " << k.bs << ", \"qd\": " << k.qd
             << ", \"iops\": [";
        for (std::size_t i = 0; i < v.size(); i++) {
            json << (i != 0 ? ", " : "") << static_cast<long long>(v[i]);
        }
        json << "], \"iops_median\": " << static_cast<long long>(med[k]) << "}";
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
            std::printf("  %-6s fixed/fio-fixed %.2f", m.c_str(), fio != 0 ? fixed / fio : 0.0);
            if (dma != 0 && fixed_pt != 0) {
                std::printf("   dmabuf/fixed(pt) %.2f", dma / fixed_pt);
            }
            std::printf("\n");
        }
    }
    dat.close();

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
