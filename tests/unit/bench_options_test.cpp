// dmabufio-bench's command line: t/io_uring-style flags, --buffers/--dmabuf/--move-every,
// --progress, errors.
#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "options.hpp"

namespace {

using dmabufio::Exporter;
using dmabufio::bench::Options;

Options parse(std::initializer_list<const char*> args) {
    std::vector<std::string> store{"dmabufio-bench"};
    store.insert(store.end(), args.begin(), args.end());
    std::vector<char*> argv;
    argv.reserve(store.size() + 1);
    for (auto& s : store) {
        argv.push_back(s.data());
    }
    argv.push_back(nullptr);
    return dmabufio::bench::parse_options(static_cast<int>(store.size()), argv.data());
}

std::string error(std::initializer_list<const char*> args) {
    try {
        parse(args);
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return "";
}

TEST(BenchOptions, DefaultsAreTIoUrings) {
    const Options o = parse({"/dev/nvme0n1"});
    EXPECT_EQ(o.targets, std::vector<std::string>{"/dev/nvme0n1"});
    EXPECT_EQ(o.depth, 32U);
    EXPECT_EQ(o.submit_batch, 8U);
    EXPECT_EQ(o.complete_batch, 8U);
    EXPECT_EQ(o.bs, 4096U);
    EXPECT_FALSE(o.polled);
    EXPECT_TRUE(o.fixed_files);
    EXPECT_TRUE(o.random);
    EXPECT_FALSE(o.write);
    EXPECT_EQ(o.threads, 1U);
    EXPECT_FALSE(o.register_ring);
    EXPECT_FALSE(o.sqpoll);
    EXPECT_EQ(o.buffers, "fixed");
    EXPECT_EQ(o.exporter, Exporter::kUdmabuf);
    EXPECT_EQ(o.move_every_ms, 0U);
    EXPECT_FALSE(o.json);
    EXPECT_TRUE(o.progress);
}

TEST(BenchOptions, ProgressOnStderrUnlessJsonOrSaidOtherwise) {
    EXPECT_TRUE(parse({"/dev/x"}).progress);
    EXPECT_FALSE(parse({"--json", "/dev/x"}).progress);
    EXPECT_TRUE(parse({"--json", "--progress", "/dev/x"}).progress);
    EXPECT_TRUE(parse({"--progress", "--json", "/dev/x"}).progress);
    EXPECT_FALSE(parse({"--no-progress", "/dev/x"}).progress);
    EXPECT_FALSE(parse({"--progress", "--no-progress", "/dev/x"}).progress);
}

TEST(BenchOptions, EveryFlag) {
    const Options o =
        parse({"-d",       "64",        "-s",     "16",       "-c",          "4",
               "-b",       "131072",    "-p",     "1",        "-F",          "0",
               "-n",       "2",         "-X",     "1",        "-r",          "2.5",
               "-R",       "0",         "-w",     "1",        "--span",      "268435456",
               "--sqpoll", "--buffers", "dmabuf", "--dmabuf", "test",        "--move-every",
               "10",       "--mark",    "/tmp/m", "--json",   "/dev/nvme1n1"});
    EXPECT_EQ(o.depth, 64U);
    EXPECT_EQ(o.submit_batch, 16U);
    EXPECT_EQ(o.complete_batch, 4U);
    EXPECT_EQ(o.bs, 131072U);
    EXPECT_TRUE(o.polled);
    EXPECT_FALSE(o.fixed_files);
    EXPECT_EQ(o.threads, 2U);
    EXPECT_TRUE(o.register_ring);
    EXPECT_DOUBLE_EQ(o.runtime, 2.5);
    EXPECT_FALSE(o.random);
    EXPECT_TRUE(o.write);
    EXPECT_EQ(o.span, 268435456U);
    EXPECT_TRUE(o.sqpoll);
    EXPECT_EQ(o.buffers, "dmabuf");
    EXPECT_EQ(o.exporter, Exporter::kTest);
    EXPECT_EQ(o.move_every_ms, 10U);
    EXPECT_EQ(o.mark, "/tmp/m");
    EXPECT_TRUE(o.json);
    EXPECT_EQ(o.targets, std::vector<std::string>{"/dev/nvme1n1"});
}

// The test exporter's VRAM moves too (evicted and restored in turn); udmabuf doesn't.
TEST(BenchOptions, VramBuffersMoveOnDemand) {
    const Options o =
        parse({"--buffers", "dmabuf", "--dmabuf", "vram", "--move-every", "10", "/dev/x"});
    EXPECT_EQ(o.exporter, Exporter::kVram);
    EXPECT_EQ(o.move_every_ms, 10U);
    EXPECT_NE(error({"--buffers", "dmabuf", "--dmabuf", "udmabuf", "--move-every", "10", "/dev/a"})
                  .find("--dmabuf test or vram"),
              std::string::npos);
}

TEST(BenchOptions, CompatBuffersAreAKindAndTheOldFallbackFlagIsGone) {
    EXPECT_EQ(parse({"--buffers", "compat", "--dmabuf", "heap", "/dev/x"}).buffers, "compat");
    EXPECT_THROW(parse({"--mmap-fallback", "/dev/x"}), std::invalid_argument);
    try {
        parse({"--buffers", "bounce", "/dev/x"});
        ADD_FAILURE() << "--buffers bounce was accepted";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("plain, fixed, dmabuf or compat"), std::string::npos)
            << e.what();
    }
}

TEST(BenchOptions, HugepagesForPlainFixedAndUdmabuf) {
    EXPECT_FALSE(parse({"/dev/x"}).hugepages);
    EXPECT_TRUE(parse({"--hugepages", "/dev/x"}).hugepages);
    EXPECT_TRUE(parse({"--hugepages", "--buffers", "plain", "/dev/x"}).hugepages);
    EXPECT_TRUE(parse({"--hugepages", "--buffers", "dmabuf", "/dev/x"}).hugepages);
}

TEST(BenchOptions, FixedBuffersFlagIsBuffersFixedOrPlain) {
    EXPECT_EQ(parse({"-B", "0", "/dev/x"}).buffers, "plain");
    EXPECT_EQ(parse({"-B", "1", "/dev/x"}).buffers, "fixed");
}

TEST(BenchOptions, BatchesAreClampedToTheDepth) {
    const Options o = parse({"-d", "4", "-s", "32", "-c", "0", "/dev/x"});
    EXPECT_EQ(o.submit_batch, 4U);
    EXPECT_EQ(o.complete_batch, 1U);
}

TEST(BenchOptions, SeveralTargetsInTheirOrder) {
    EXPECT_EQ(parse({"-d", "4", "/dev/a", "/mnt/f", "/dev/b"}).targets,
              (std::vector<std::string>{"/dev/a", "/mnt/f", "/dev/b"}));
}

TEST(BenchOptions, ParsesTwiceInOneProcess) {
    EXPECT_EQ(parse({"-d", "8", "/dev/a"}).depth, 8U);
    EXPECT_EQ(parse({"-d", "16", "/dev/b"}).depth, 16U);
}

TEST(BenchOptions, ErrorsSayWhatIsWrong) {
    EXPECT_NE(error({}).find("a DEVICE (block device or file) is needed"), std::string::npos);
    EXPECT_NE(error({"-d", "x", "/dev/a"}).find("-d takes a number"), std::string::npos);
    EXPECT_NE(error({"-d", "0", "/dev/a"}).find("depth must be > 0"), std::string::npos);
    EXPECT_NE(error({"-b", "1000", "/dev/a"}).find("multiple of 512"), std::string::npos);
    EXPECT_NE(error({"-n", "0", "/dev/a"}).find("-n takes 1 to 64"), std::string::npos);
    EXPECT_NE(error({"--buffers", "gpu", "/dev/a"}).find("plain, fixed, dmabuf or compat"),
              std::string::npos);
    EXPECT_NE(error({"--dmabuf", "gpu", "/dev/a"}).find("udmabuf, heap, test or vram"),
              std::string::npos);
    EXPECT_NE(error({"--move-every", "10", "/dev/a"}).find("--dmabuf test"), std::string::npos);
    EXPECT_NE(error({"--buffers", "dmabuf", "--move-every", "10", "/dev/a"}).find("--dmabuf test"),
              std::string::npos);
    EXPECT_NE(error({"-r", "0", "/dev/a"}).find("positive number of seconds"), std::string::npos);
    EXPECT_NE(error({"--hugepages", "--buffers", "compat", "/dev/a"}).find("--hugepages takes"),
              std::string::npos);
    EXPECT_NE(error({"--hugepages", "--buffers", "dmabuf", "--dmabuf", "heap", "/dev/a"})
                  .find("the dma-buf from udmabuf"),
              std::string::npos);
    EXPECT_NE(error({"--bogus", "/dev/a"}).find("unknown option"), std::string::npos);
}

}  // namespace
