// fio with its I/O buffers in a dma-buf (issue 11, part 5): the patched fio (tools/fio/build,
// dmabuf= of its io_uring engine) runs the job file users copy, tools/fio/examples/
// dmabuf-verify.fio, on the guest's NVMe for each of the lab's exporters: crc32c-stamped writes
// read back and verified through the dma-buf, then random reads.
//
// fio's own word is not taken for the path: while fio runs, debugfs dma_buf/bufinfo must list a
// dma-buf of that exporter with the NVMe's PCI function attached (the registration's mapping),
// none before, and none once fio has exited. An exporter missing from the kernel fails its test.
//
// t/io_uring -E (patch 0003) reads through each exporter's dma-buf the same way, checked the same.
//
// DMABUFIO_FIO and DMABUFIO_FIO_JOB name another fio binary or job file (by default build/fio/fio
// and the example); the job file reads DEV and DMABUF from the environment.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "guest_util.hpp"

extern char** environ;  // NOLINT: POSIX

namespace {

std::string env_or(const char* name, const char* fallback) {
    const char* v = std::getenv(name);
    return v != nullptr && *v != '\0' ? v : fallback;
}

struct Exporter {
    const char* option;    // fio's dmabuf=
    const char* device;    // what the kernel must have
    const char* exp_name;  // the exporter's name in bufinfo (prefix)
};

const std::array<Exporter, 3> kExporters = {{
    {"udmabuf", "/dev/udmabuf", "udmabuf"},
    {"heap", "/dev/dma_heap/system", "system"},
    {"test", "/dev/dmabuf_test", "dmabuf_test"},
}};

// The PCI function behind the NVMe namespace (what dma-buf I/O attaches), e.g. "0000:00:04.0".
std::string nvme_pci_function() {
    const std::filesystem::path dev = std::string("/sys/block/") +
                                      std::filesystem::path(guest::kDevice).filename().string() +
                                      "/device/device";
    return std::filesystem::canonical(dev).filename().string();
}

// dma-bufs in debugfs bufinfo whose exporter name starts with exp_name and that have `device`
// attached.
int attached(const std::string& exp_name, const std::string& device) {
    int n = 0;
    for (const guest::BufInfo& o : guest::bufinfo()) {
        if (o.exp_name.rfind(exp_name, 0) == 0 &&
            std::find(o.devices.begin(), o.devices.end(), device) != o.devices.end()) {
            n++;
        }
    }
    return n;
}

std::string slurp(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

struct FioRun {
    int status = -1;       // exit status, -1 if it did not exit
    std::string output;    // stdout and stderr
    int max_attached = 0;  // most exporter dma-bufs seen attached to the NVMe during the run
    std::string seen;      // a bufinfo snapshot from when they were
    double seconds = 0;
};

// Runs args (output to log) in /tmp with env added to ours, polling bufinfo for exporter e's
// dma-bufs attached to nvme until it exits.
FioRun run_polled(std::vector<std::string> args, std::vector<std::string> env,
                  const std::string& log, const Exporter& e, const std::string& nvme) {
    const std::string fio = args.front();
    for (char** v = environ; *v != nullptr; v++) {
        env.emplace_back(*v);
    }
    std::vector<char*> envp;
    envp.reserve(env.size() + 1);
    for (auto& s : env) {
        envp.push_back(s.data());
    }
    envp.push_back(nullptr);
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (auto& s : args) {
        argv.push_back(s.data());
    }
    argv.push_back(nullptr);

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    // fio writes verify state files to its working directory: /tmp is the guest's tmpfs.
    FioRun r;
    pid_t pid = -1;
    const std::string cwd = std::filesystem::current_path();
    std::filesystem::current_path("/tmp");
    const int err = posix_spawn(&pid, fio.c_str(), &fa, nullptr, argv.data(), envp.data());
    std::filesystem::current_path(cwd);
    posix_spawn_file_actions_destroy(&fa);
    if (err != 0) {
        r.output = "posix_spawn " + fio + ": " + std::strerror(err);
        return r;
    }
    const auto t0 = std::chrono::steady_clock::now();
    int wstatus = 0;
    while (::waitpid(pid, &wstatus, WNOHANG) == 0) {
        const int n = attached(e.exp_name, nvme);
        if (n > r.max_attached) {
            r.max_attached = n;
            r.seen = slurp("/sys/kernel/debug/dma_buf/bufinfo");
        }
        if (std::chrono::steady_clock::now() - t0 > std::chrono::minutes(5)) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &wstatus, 0);
            break;
        }
        // Not faster: under TCG each read of bufinfo costs the job noticeably.
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
    r.output = slurp(log);
    return r;
}

// Runs fio with the job file for exporter e, polling bufinfo until fio exits.
FioRun run_fio(const Exporter& e, const std::string& nvme) {
    const std::string fio = env_or("DMABUFIO_FIO", DMABUFIO_FIO_BINARY);
    const std::string job = env_or("DMABUFIO_FIO_JOB", DMABUFIO_FIO_JOB_FILE);
    return run_polled({fio, "--eta=never", job},
                      {std::string("DEV=") + guest::kDevice, std::string("DMABUF=") + e.option},
                      "/tmp/fio-" + std::string(e.option) + ".log", e, nvme);
}

void PrintTo(const Exporter& e, std::ostream* os) { *os << e.option; }

class Fio : public ::testing::TestWithParam<Exporter> {};

TEST_P(Fio, VerifiesThroughADmaBufAndTheNvmeMapsIt) {
    const Exporter& e = GetParam();
    ASSERT_TRUE(std::filesystem::exists(e.device))
        << e.device << " missing: the lab kernel must have every exporter (dmabuf=" << e.option
        << " cannot be tested)";
    const std::string nvme = nvme_pci_function();
    ASSERT_EQ(attached(e.exp_name, nvme), 0)
        << "a " << e.exp_name << " dma-buf is attached to " << nvme << " before fio runs:\n"
        << slurp("/sys/kernel/debug/dma_buf/bufinfo");

    const FioRun r = run_fio(e, nvme);
    std::cout << "[   fio    ] dmabuf=" << e.option << ": exit " << r.status << " after "
              << r.seconds << " s, " << r.max_attached << " dma-buf(s) seen attached to " << nvme
              << "\n";
    EXPECT_EQ(r.status, 0) << r.output;

    // The engine says it registered the dma-buf, one slot for the one file ...
    const std::string registered =
        std::string("fio: io_uring: dmabuf=") + e.option + ": registered 1 dma-buf slot(s)";
    EXPECT_NE(r.output.find(registered), std::string::npos)
        << "no '" << registered << "' line: the dma-buf path was not taken\n"
        << r.output;
    // ... and the kernel shows it: the exporter's dma-buf attached to the NVMe while fio ran.
    EXPECT_GE(r.max_attached, 1) << "no " << e.exp_name << " dma-buf attached to " << nvme
                                 << " while fio ran (debugfs dma_buf/bufinfo)";

    // Both jobs ended without error; the verify job read back every block it wrote.
    const std::regex job_err(R"(\n(\S+): \(groupid=\d+, jobs=\d+\): err= *(\d+))");
    int jobs = 0;
    for (std::sregex_iterator it(r.output.begin(), r.output.end(), job_err), end; it != end; ++it) {
        jobs++;
        EXPECT_EQ((*it)[2].str(), "0") << "job " << (*it)[1] << " failed";
    }
    EXPECT_EQ(jobs, 2) << r.output;
    std::smatch m;
    const std::regex issued(R"(issued rwts: total=(\d+),(\d+),)");
    ASSERT_TRUE(std::regex_search(r.output, m, issued)) << r.output;
    EXPECT_GT(std::stoul(m[2].str()), 0U) << "write-verify wrote nothing";
    EXPECT_EQ(m[1].str(), m[2].str()) << "write-verify did not read back (verify) every write";
    for (const char* bad : {"verify: bad", "bad magic", "verify failed", "fio: pid="}) {
        EXPECT_EQ(r.output.find(bad), std::string::npos) << "'" << bad << "' in:\n" << r.output;
    }

    // fio gone, registration gone: the mapping is released.
    EXPECT_TRUE(guest::wait_until([&] { return attached(e.exp_name, nvme) == 0; }, 10))
        << "a " << e.exp_name << " dma-buf still attached to " << nvme << " after fio exited:\n"
        << slurp("/sys/kernel/debug/dma_buf/bufinfo");
    if (HasFailure() && !r.seen.empty()) {
        std::cout << "bufinfo while fio ran:\n" << r.seen;
    }
}

// fio's benchmark, t/io_uring -E (patch 0003; DMABUFIO_T_IO_URING names another binary): 4 KiB
// reads at depth 32 from the NVMe, the fixed buffers one dma-buf of the exporter registered for the
// device. 2 s: t/io_uring prints the IOPS of each whole second but the last. bufinfo must show the
// exporter's dma-buf attached to the NVMe while it runs, and none once it has exited.
TEST_P(Fio, TIoUringReadsThroughEachExportersDmaBuf) {
    const Exporter& e = GetParam();
    ASSERT_TRUE(std::filesystem::exists(e.device)) << e.device << " missing";
    const std::string nvme = nvme_pci_function();
    ASSERT_EQ(attached(e.exp_name, nvme), 0)
        << "a " << e.exp_name << " dma-buf is attached to " << nvme << " before t/io_uring runs";

    const std::string bin = env_or("DMABUFIO_T_IO_URING", DMABUFIO_T_IO_URING_BINARY);
    const FioRun r = run_polled(
        {bin, "-E", e.option, "-B1", "-F1", "-p0", "-b4096", "-d32", "-r2", guest::kDevice}, {},
        "/tmp/t-io_uring-" + std::string(e.option) + ".log", e, nvme);
    std::cout << "[ t/io_uring ] -E " << e.option << ": exit " << r.status << ", " << r.max_attached
              << " dma-buf(s) seen attached to " << nvme << "\n";
    EXPECT_EQ(r.status, 0) << r.output;
    const std::string line = std::string("dmabuf: ") + e.option + ", 1 slot(s)";
    EXPECT_NE(r.output.find(line), std::string::npos)
        << "no '" << line << "' line: the dma-buf path was not taken\n"
        << r.output;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r.output, m, std::regex(R"(Maximum IOPS=([0-9.]+))")))
        << r.output;
    EXPECT_GT(std::stod(m[1].str()), 0) << r.output;
    EXPECT_GE(r.max_attached, 1) << "no " << e.exp_name << " dma-buf attached to " << nvme
                                 << " while t/io_uring ran (debugfs dma_buf/bufinfo)";
    EXPECT_TRUE(guest::wait_until([&] { return attached(e.exp_name, nvme) == 0; }, 10))
        << "a " << e.exp_name << " dma-buf still attached to " << nvme
        << " after t/io_uring exited";
    if (HasFailure() && !r.seen.empty()) {
        std::cout << "bufinfo while t/io_uring ran:\n" << r.seen;
    }
}

INSTANTIATE_TEST_SUITE_P(Exporters, Fio, ::testing::ValuesIn(kExporters),
                         [](const ::testing::TestParamInfo<Exporter>& info) {
                             return std::string(info.param.option);
                         });

}  // namespace
