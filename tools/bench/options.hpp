// dmabufio-bench's command line (see the header of bench.cpp), parsed apart from the benchmark so
// that host unit tests can check it.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "dmabufio/dmabuf.hpp"

namespace dmabufio::bench {

struct Options {
    unsigned depth = 32;
    unsigned submit_batch = 8;
    unsigned complete_batch = 8;
    unsigned bs = 4096;
    bool polled = false;
    bool fixed_files = true;
    bool sqpoll = false;
    bool register_ring = false;
    unsigned threads = 1;
    double runtime = 5;
    bool random = true;
    bool write = false;
    std::uint64_t span = 0;
    std::string buffers = "fixed";
    Exporter exporter = Exporter::kUdmabuf;
    // --hugepages: the buffers on 2 MiB hugetlb pages (plain, fixed, and dmabuf from udmabuf)
    bool hugepages = false;
    unsigned move_every_ms = 0;
    bool json = false;
    // A line a second on stderr ("IOPS=..., BW=...MiB/s, IOS/call=..."): by default without
    // --json only; --progress / --no-progress say so either way.
    bool progress = true;
    std::string mark;  // --mark FILE: "start"/"stop" written there around the timed run
    // The block devices or files I/O goes to, one after the other (one registration each).
    std::vector<std::string> targets;
};

// Parses argv (getopt_long; may be called more than once). Throws std::invalid_argument with a
// sentence saying what is wrong.
Options parse_options(int argc, char** argv);

}  // namespace dmabufio::bench
