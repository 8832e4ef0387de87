#include "options.hpp"

#include <getopt.h>

#include <algorithm>
#include <array>
#include <exception>
#include <string>

#include "dmabufio/error.hpp"

namespace dmabufio::bench {
namespace {

[[noreturn]] void usage(const std::string& msg) { throw std::invalid_argument(msg); }

std::uint64_t number(const char* arg, const char* what) {
    try {
        std::size_t end = 0;
        const std::uint64_t v = std::stoull(arg, &end);
        if (arg[end] != '\0') {
            throw std::invalid_argument(arg);
        }
        return v;
    } catch (const std::exception&) {
        usage(std::string(what) + " takes a number, not '" + arg + "'");
    }
}

unsigned u32(const char* arg, const char* what) {
    const std::uint64_t v = number(arg, what);
    if (v > 0xffffffffU) {
        usage(std::string(what) + " " + arg + " is out of range");
    }
    return static_cast<unsigned>(v);
}

bool boolean(const char* arg, const char* what) { return number(arg, what) != 0; }

}  // namespace

Options parse_options(int argc, char** argv) {
    Options o;
    enum {
        kBuffers = 1000,
        kJson,
        kSpan,
        kDmaBuf,
        kSqpoll,
        kMoveEvery,
        kMark,
        kProgress,
        kNoProgress,
        kHugepages
    };
    int progress = -1;  // -1: not said (no progress with --json)
    const std::array<option, 11> longopts{{{"buffers", required_argument, nullptr, kBuffers},
                                           {"dmabuf", required_argument, nullptr, kDmaBuf},
                                           {"json", no_argument, nullptr, kJson},
                                           {"span", required_argument, nullptr, kSpan},
                                           {"sqpoll", no_argument, nullptr, kSqpoll},
                                           {"move-every", required_argument, nullptr, kMoveEvery},
                                           {"mark", required_argument, nullptr, kMark},
                                           {"progress", no_argument, nullptr, kProgress},
                                           {"no-progress", no_argument, nullptr, kNoProgress},
                                           {"hugepages", no_argument, nullptr, kHugepages},
                                           {nullptr, 0, nullptr, 0}}};
    optind = 0;  // a full getopt reset: parse_options() may run more than once (unit tests)
    int c = 0;
    while ((c = getopt_long(argc, argv, "d:s:c:b:p:F:B:n:X:r:R:w:", longopts.data(), nullptr)) !=
           -1) {
        switch (c) {
            case 'd':
                o.depth = u32(optarg, "-d");
                break;
            case 's':
                o.submit_batch = u32(optarg, "-s");
                break;
            case 'c':
                o.complete_batch = u32(optarg, "-c");
                break;
            case 'b':
                o.bs = u32(optarg, "-b");
                break;
            case 'p':
                o.polled = boolean(optarg, "-p");
                break;
            case 'F':
                o.fixed_files = boolean(optarg, "-F");
                break;
            case 'B':
                o.buffers = boolean(optarg, "-B") ? "fixed" : "plain";
                break;
            case 'n':
                o.threads = u32(optarg, "-n");
                break;
            case 'X':
                o.register_ring = boolean(optarg, "-X");
                break;
            case 'r':
                try {
                    o.runtime = std::stod(optarg);
                } catch (const std::exception&) {
                    usage("-r takes seconds");
                }
                break;
            case 'R':
                o.random = boolean(optarg, "-R");
                break;
            case 'w':
                o.write = boolean(optarg, "-w");
                break;
            case kBuffers:
                o.buffers = optarg;
                break;
            case kDmaBuf:
                try {
                    o.exporter = parse_exporter(optarg);
                } catch (const Error& e) {
                    usage(e.what());
                }
                break;
            case kJson:
                o.json = true;
                break;
            case kSpan:
                o.span = number(optarg, "--span");
                break;
            case kSqpoll:
                o.sqpoll = true;
                break;
            case kMoveEvery:
                o.move_every_ms = u32(optarg, "--move-every");
                break;
            case kMark:
                o.mark = optarg;
                break;
            case kProgress:
                progress = 1;
                break;
            case kNoProgress:
                progress = 0;
                break;
            case kHugepages:
                o.hugepages = true;
                break;
            default:
                usage("unknown option");
        }
    }
    if (optind >= argc) {
        usage("a DEVICE (block device or file) is needed");
    }
    o.targets.assign(argv + optind, argv + argc);
    o.progress = progress == -1 ? !o.json : progress == 1;
    if (o.buffers != "plain" && o.buffers != "fixed" && o.buffers != "dmabuf" &&
        o.buffers != "compat") {
        usage("--buffers takes plain, fixed, dmabuf or compat");
    }
    if (o.depth == 0 || o.bs == 0 || o.bs % 512 != 0) {
        usage("depth must be > 0 and the block size a multiple of 512");
    }
    if (o.threads == 0 || o.threads > 64) {
        usage("-n takes 1 to 64 threads");
    }
    if (o.runtime <= 0) {
        usage("-r takes a positive number of seconds");
    }
    if (o.move_every_ms != 0 && (o.buffers != "dmabuf" || (o.exporter != Exporter::kTest &&
                                                           o.exporter != Exporter::kVram))) {
        usage(
            "--move-every needs --buffers dmabuf --dmabuf test or vram (only the test exporter "
            "MOVEs)");
    }
    if (o.hugepages &&
        (o.buffers == "compat" || (o.buffers == "dmabuf" && o.exporter != Exporter::kUdmabuf))) {
        usage(
            "--hugepages takes plain, fixed or dmabuf buffers, the dma-buf from udmabuf (a "
            "hugetlbfs memfd)");
    }
    o.submit_batch = std::clamp(o.submit_batch, 1U, o.depth);
    o.complete_batch = std::clamp(o.complete_batch, 1U, o.depth);
    return o;
}

}  // namespace dmabufio::bench
