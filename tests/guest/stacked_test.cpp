// Stacked devices and multipath (issue #12 items 2-5): dma-buf slots registered against dm-linear
// and dm-stripe tables and an md raid0 array over two NVMe, and against the head of an NVMe
// subsystem with two controllers (its own boot: make check's guest-stacked, vm/run --nvme 2
// --multipath). The registration maps the dma-buf once for every device below; READ_FIXED and
// WRITE_FIXED cross chunk and device boundaries, checked byte for byte against the ordinary
// O_DIRECT path while the test exporter moves the buffer; stacks that would need the data's pages
// are refused, and a table reloaded under a registration fails its I/O cleanly.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
#include "dmabufio/fd.hpp"
#include "dmabufio/ring.hpp"
#include "guest_util.hpp"

namespace {

using dmabufio::BufferTable;
using dmabufio::DmaBuf;
using dmabufio::Exporter;
using dmabufio::Fd;
using dmabufio::Ring;
using dmabufio::SlotKind;
using guest::kKiB;
using guest::kMiB;
using guest::VerifiedRounds;

constexpr std::size_t kSpan = 128 * kMiB;  // the part of each target the tests use
constexpr std::size_t kHalf = kSpan / 2;   // dm-linear's boundary between its two devices
constexpr unsigned kChunkKiB = 64;         // dm-stripe's and raid0's chunk
constexpr const char* kMd = "/dev/md/dmabufio";

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == ' ' || s.back() == '\n')) {
        s.pop_back();
    }
    return s;
}

// The /dev node of the NVMe namespace, or multipath head, whose controller (or subsystem) has
// `serial`; the per-path nodes of a multipath namespace (nvmeXcYnZ) are skipped.
std::string nvme_by_serial(const std::string& serial) {
    for (const auto& e : std::filesystem::directory_iterator("/sys/block")) {
        const std::string name = e.path().filename();
        if (name.rfind("nvme", 0) != 0 || name.find('c') != std::string::npos) {
            continue;
        }
        std::ifstream f(e.path() / "device" / "serial");
        std::string s;
        std::getline(f, s);
        if (trim(s) == serial) {
            return "/dev/" + name;
        }
    }
    throw std::runtime_error("no NVMe namespace with serial " + serial);
}

std::string sectors(std::size_t bytes) { return std::to_string(bytes / 512); }

void run(const std::string& cmd) {
    auto [st, out] = guest::run_command(cmd);
    if (st != 0) {
        throw std::runtime_error(cmd + " failed:\n" + out);
    }
}

// Retries cmd for up to 10 s while it fails (the device still busy: io_uring drops a registered
// file's last reference from a worker after the ring is gone); returns its last output if it never
// succeeded, "" if it did.
std::string retry(const std::string& cmd) {
    std::string out;
    const bool ok = guest::wait_until(
        [&] {
            auto [st, o] = guest::run_command(cmd);
            out = o;
            return st == 0;
        },
        10, 100);
    return ok ? std::string() : cmd + " failed for 10 s:\n" + out;
}
void run_when_idle(const std::string& cmd) {
    const std::string err = retry(cmd);
    if (!err.empty()) {
        throw std::runtime_error(err);
    }
}

// Runs the commands it was given when it goes out of scope, the last one first: the teardown of the
// stacks a test made, also when the test fails half way. A teardown that fails fails the test.
class Teardown {
  public:
    Teardown() = default;
    Teardown(const Teardown&) = delete;
    Teardown& operator=(const Teardown&) = delete;
    Teardown(Teardown&&) = delete;
    Teardown& operator=(Teardown&&) = delete;
    ~Teardown() {
        for (std::size_t i = cmds_.size(); i-- > 0;) {
            const std::string err = retry(cmds_[i]);
            EXPECT_EQ(err, "");
        }
    }
    void add(std::string cmd) { cmds_.push_back(std::move(cmd)); }
    // Runs a command given to add() now (retried as above, throws if it never succeeds) and
    // forgets it.
    void now(const std::string& cmd) {
        std::erase(cmds_, cmd);
        run_when_idle(cmd);
    }

  private:
    std::vector<std::string> cmds_;
};

// dmsetup without udev in the guest: libdevmapper makes the /dev/mapper nodes itself.
const std::string kDmsetup = "DM_DISABLE_UDEV=1 dmsetup ";

std::string nvme_a() { return nvme_by_serial("dmabufio0"); }
std::string nvme_b() { return nvme_by_serial("dmabufio1"); }

// dm tables over the two NVMe drives (sizes in 512-byte sectors).
std::string linear_table() {
    return "0 " + sectors(kHalf) + " linear " + nvme_a() + " 0\n" + sectors(kHalf) + " " +
           sectors(kHalf) + " linear " + nvme_b() + " 0";
}
std::string stripe_table() {
    return "0 " + sectors(kSpan) + " striped 2 " + std::to_string(kChunkKiB * 2) + " " + nvme_a() +
           " 0 " + nvme_b() + " 0";
}

// Creates a dm device and has `teardown` remove it.
void dm_create(Teardown& teardown, const std::string& name, const std::string& table) {
    run("printf '%s\\n' '" + table + "' | " + kDmsetup + "create " + name);
    teardown.add(kDmsetup + "remove " + name);
}
void dm_reload(const std::string& name, const std::string& table) {
    run("printf '%s\\n' '" + table + "' | " + kDmsetup + "reload " + name + " && " + kDmsetup +
        "resume " + name);
}
// Creates the md array kMd and has `teardown` stop it and wipe its members' superblocks.
void md_create(Teardown& teardown, const std::string& level, const std::string& members,
               const std::string& options = "") {
    run("mdadm --create " + std::string(kMd) + " --run --quiet --level=" + level +
        " --raid-devices=2 --metadata=1.2 " + options + " " + members);
    teardown.add("mdadm --zero-superblock " + members);
    teardown.add("mdadm --stop " + std::string(kMd));
}

// A target kind: how to make it, where it is, how many devices do DMA below it.
struct Target {
    std::string kind;
    std::string dev;
    int dma_devices = 0;
};

// Makes the target `kind` (its teardown goes to `teardown`).
Target make_target(Teardown& teardown, const std::string& kind) {
    const std::string members = nvme_a() + " " + nvme_b();
    if (kind == "nvme") {
        return {kind, nvme_a(), 1};
    }
    if (kind == "dm-linear") {
        dm_create(teardown, "dmabufio-linear", linear_table());
        return {kind, "/dev/mapper/dmabufio-linear", 2};
    }
    if (kind == "dm-stripe") {
        dm_create(teardown, "dmabufio-stripe", stripe_table());
        return {kind, "/dev/mapper/dmabufio-stripe", 2};
    }
    if (kind == "md-raid0") {
        md_create(teardown, "0", members, "--chunk=" + std::to_string(kChunkKiB));
        return {kind, kMd, 2};
    }
    if (kind == "multipath") {
        return {kind, nvme_by_serial("dmabufio-mp"), 2};  // one per controller (path)
    }
    throw std::runtime_error("unknown target kind " + kind);
}

// The dma-buf's inode, to find it in debugfs' bufinfo.
ino_t inode_of(const DmaBuf& buf) {
    struct stat st {};
    if (::fstat(buf.fd(), &st) != 0) {
        throw std::runtime_error(std::string("fstat: ") + std::strerror(errno));
    }
    return st.st_ino;
}

class Stacked : public testing::TestWithParam<std::string> {
  protected:
    void SetUp() override {
        ASSERT_TRUE(dmabufio::probe().dmabuf_slots) << dmabufio::probe().why;
        target_ = make_target(teardown_, GetParam());
    }
    [[nodiscard]] Fd open_target() const {
        Fd f(::open(target_.dev.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
        if (!f.valid()) {
            throw std::runtime_error("open " + target_.dev + ": " + std::strerror(errno));
        }
        return f;
    }

    Teardown teardown_;  // runs after the test body's rings and files are gone
    Target target_;
};

// One registration maps the dma-buf for every device that does DMA below the target: two NVMe
// under dm and md, two controllers under the multipath head; clearing the slot detaches them all.
TEST_P(Stacked, RegistrationMapsTheDmaBufForEveryDeviceBelow) {
    Fd f = open_target();
    Ring ring(4);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, 4 * kMiB);
    const ino_t ino = inode_of(buf);
    ASSERT_EQ(guest::attached_devices(ino), 0);
    ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
    EXPECT_EQ(guest::attached_devices(ino), target_.dma_devices);
    table.clear(0);
    EXPECT_TRUE(guest::wait_until([&] { return guest::attached_devices(ino) == 0; }, 10))
        << guest::attached_devices(ino) << " devices still attached";
}

// Verified reads and writes at queue depths 1 to 64, 4 KiB to 256 KiB each at random 4 KiB
// offsets (crossing 64 KiB chunks, and dm-linear's device boundary), then 1 to 3 MiB ones across
// the boundary, into a test-exporter dma-buf that another thread MOVEs every 20 ms; the buffer's
// slices sit at both ends of it. Reads are checked against what the ordinary path wrote, writes
// read back through it.
TEST_P(Stacked, VerifiedIoAtDepthsWhileTheBufferMoves) {
    constexpr std::size_t kSlot = 256 * kKiB;
    constexpr unsigned kMaxDepth = 64;
    constexpr std::size_t kWindow = kMiB;  // one I/O of a batch per window: no overlaps
    const guest::Reference plain(target_.dev);
    guest::Memory data(kSpan);
    guest::fill(data.data(), kSpan, 41);
    plain.write(data.data(), kSpan, 0);

    Fd f = open_target();
    Ring ring(kMaxDepth);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kMaxDepth * kSlot);
    ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
    auto view = buf.map();
    guest::PeriodicMover mover(buf.fd(), std::chrono::milliseconds(20));

    struct Io {
        bool write;
        unsigned len;
        std::uint64_t buf_off;
        std::uint64_t at;
    };
    std::mt19937_64 gen(23);
    guest::Memory back(3 * kMiB);
    std::size_t ios = 0;
    std::size_t verified = 0;
    auto run_batch = [&](const std::vector<Io>& batch) {
        for (std::size_t i = 0; i < batch.size(); i++) {
            const Io& io = batch[i];
            if (io.write) {
                guest::fill(view.data() + io.buf_off, io.len, gen());
            }
            table.prep(io.write, f.get(), 0, io.buf_off, io.len, io.at, i);
        }
        for (std::size_t i = 0; i < batch.size(); i++) {
            auto [ud, res] = ring.submit_and_wait_one();
            ASSERT_LT(ud, batch.size());
            ASSERT_EQ(res, static_cast<int>(batch[ud].len))
                << "depth " << batch.size() << ", I/O at " << batch[ud].at;
            ios++;
        }
        for (const Io& io : batch) {
            if (io.write) {
                std::memcpy(data.data() + io.at, view.data() + io.buf_off, io.len);
                plain.read(back.data(), io.len, io.at);
                ASSERT_EQ(std::memcmp(back.data(), data.data() + io.at, io.len), 0)
                    << "write of " << io.len << " at " << io.at << " reads back wrong";
            } else {
                ASSERT_EQ(std::memcmp(view.data() + io.buf_off, data.data() + io.at, io.len), 0)
                    << "read of " << io.len << " at " << io.at << " brought wrong bytes";
            }
            verified += io.len;
        }
    };

    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned qd : {1U, 4U, 16U, 64U}) {
        for (int round = 0; round < 4 && !HasFatalFailure(); round++) {
            // Windows start half a window in, so that one straddles dm-linear's boundary.
            std::vector<unsigned> windows(kSpan / kWindow - 1);
            for (unsigned w = 0; w < windows.size(); w++) {
                windows[w] = w;
            }
            std::shuffle(windows.begin(), windows.end(), gen);
            std::vector<Io> batch(qd);
            for (unsigned i = 0; i < qd; i++) {
                const auto len = static_cast<unsigned>((1 + gen() % 64) * 4 * kKiB);
                const std::uint64_t start = kWindow / 2 + windows[i] * kWindow +
                                            (gen() % ((kWindow - len) / (4 * kKiB) + 1)) * 4 * kKiB;
                // Even slices start at their slot's start, odd ones end at its end: the last one
                // ends where the dma-buf does.
                const std::uint64_t slot_off = i * kSlot + (i % 2 == 1 ? kSlot - len : 0);
                batch[i] = {gen() % 2 == 0, len, slot_off, start};
            }
            run_batch(batch);
        }
        std::printf("[          ] %s: depth %u done at %.1f s, %u moves\n", target_.kind.c_str(),
                    qd,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                    mover.moves());
    }
    // Large ones, one at a time, across dm-linear's boundary and many chunks.
    for (std::size_t len : {kMiB, 2 * kMiB, 3 * kMiB}) {
        for (bool write : {false, true}) {
            if (!HasFatalFailure()) {
                run_batch({{write, static_cast<unsigned>(len), kMaxDepth * kSlot - len,
                            kHalf - len / 2}});
            }
        }
    }
    const unsigned moves = mover.stop();
    EXPECT_EQ(mover.error(), "");
    EXPECT_GT(moves, 0U);
    std::printf("[          ] %s: %zu I/Os at depths 1-64, %zu bytes verified, %u moves\n",
                target_.kind.c_str(), ios, verified, moves);
}

INSTANTIATE_TEST_SUITE_P(OnStack, Stacked,
                         testing::Values("nvme", "dm-linear", "dm-stripe", "md-raid0", "multipath"),
                         [](const testing::TestParamInfo<std::string>& p) {
                             std::string n = p.param;
                             std::replace(n.begin(), n.end(), '-', '_');
                             return n;
                         });

// Stacks whose driver reads or writes the data itself, or sends it to a device that can't take
// dma-bufs, refuse the registration with EOPNOTSUPP: dm-crypt, dm's error target, md raid1.
TEST(StackedRefusals, StacksThatNeedTheDatasPagesAreRefused) {
    ASSERT_TRUE(dmabufio::probe().dmabuf_slots) << dmabufio::probe().why;
    Teardown teardown;
    const std::string key(64, '7');
    const std::string c = nvme_by_serial("dmabufio2");  // a and b are the raid1's
    dm_create(teardown, "dmabufio-crypt",
              "0 " + sectors(kSpan) + " crypt aes-xts-plain64 " + key + " 0 " + c + " 0");
    dm_create(teardown, "dmabufio-error", "0 " + sectors(kSpan) + " error");
    md_create(teardown, "1", nvme_a() + " " + nvme_b(), "--assume-clean");
    for (const char* dev : {"/dev/mapper/dmabufio-crypt", "/dev/mapper/dmabufio-error", kMd}) {
        const Fd f(::open(dev, O_RDWR | O_DIRECT | O_CLOEXEC));
        ASSERT_TRUE(f.valid()) << dev << ": " << std::strerror(errno);
        Ring ring(4);
        BufferTable table(ring, 1);
        DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, kMiB);
        const ino_t ino = inode_of(buf);
        EXPECT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), f.get())), -EOPNOTSUPP) << dev;
        EXPECT_EQ(guest::attached_devices(ino), 0) << dev << ": a mapping was left behind";
    }
}

// A dm table reloaded under a live registration: to a target that can't take a dma-buf range
// (crypt), its I/O fails with EOPNOTSUPP before the target sees it; to a device the registration
// has no mapping for, with EINVAL; back to the original table, it works again, data verified.
// Nothing is written where it shouldn't be.
// Nothing to map below yet: an md array that is not running (made with md_mod's new_array, as
// mdadm does before assembling) refuses with ENXIO. (A dm device has no disk to open before its
// first table is loaded, and a live table can only be replaced, not removed.)
TEST(StackedRefusals, MdArrayNotRunningIsEnxio) {
    ASSERT_TRUE(dmabufio::probe().dmabuf_slots) << dmabufio::probe().why;
    Teardown teardown;
    guest::write_str("/sys/module/md_mod/parameters/new_array", "md_dmabufio");
    teardown.add("echo clear > /sys/block/md_dmabufio/md/array_state");
    ASSERT_TRUE(guest::wait_until([] { return ::access("/dev/md_dmabufio", F_OK) == 0; }, 10));
    const Fd f(::open("/dev/md_dmabufio", O_RDWR | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(f.valid()) << std::strerror(errno);
    Ring ring(4);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, kMiB);
    EXPECT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), f.get())), -ENXIO);
    EXPECT_EQ(guest::attached_devices(inode_of(buf)), 0);
}

TEST(StackedRefusals, ATableReloadedUnderARegistrationFailsItsIoCleanly) {
    ASSERT_TRUE(dmabufio::probe().dmabuf_slots) << dmabufio::probe().why;
    const guest::Reference a(nvme_a());
    guest::Memory data(kMiB);
    guest::fill(data.data(), kMiB, 7);
    a.write(data.data(), kMiB, 0);
    const std::string only_a = "0 " + sectors(kMiB) + " linear " + nvme_a() + " 0";
    Teardown teardown;
    dm_create(teardown, "dmabufio-reload", only_a);
    {
        const Fd f(::open("/dev/mapper/dmabufio-reload", O_RDWR | O_DIRECT | O_CLOEXEC));
        ASSERT_TRUE(f.valid()) << std::strerror(errno);
        Ring ring(4);
        BufferTable table(ring, 1);
        DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, kMiB);
        ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
        auto view = buf.map();

        const std::string key(64, '7');
        dm_reload("dmabufio-reload",
                  "0 " + sectors(kMiB) + " crypt aes-xts-plain64 " + key + " 0 " + nvme_a() + " 0");
        EXPECT_EQ(table.read(f.get(), 0, 0, 64 * kKiB, 0), -EOPNOTSUPP);
        EXPECT_EQ(table.write(f.get(), 0, 0, 64 * kKiB, 0), -EOPNOTSUPP);

        dm_reload("dmabufio-reload", "0 " + sectors(kMiB) + " linear " + nvme_b() + " 0");
        EXPECT_EQ(table.read(f.get(), 0, 0, 64 * kKiB, 0), -EINVAL);
        EXPECT_EQ(table.write(f.get(), 0, 0, 64 * kKiB, 0), -EINVAL);

        dm_reload("dmabufio-reload", only_a);
        ASSERT_EQ(table.read(f.get(), 0, 0, kMiB, 0), static_cast<int>(kMiB));
        EXPECT_EQ(std::memcmp(view.data(), data.data(), kMiB), 0);
    }
    guest::Memory back(kMiB);
    a.read(back.data(), kMiB, 0);
    EXPECT_EQ(std::memcmp(back.data(), data.data(), kMiB), 0) << "the refused writes wrote";
}

// The controllers (nvmeN) whose serial is `serial`, sorted by name.
std::vector<std::string> controllers(const std::string& serial) {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator("/sys/class/nvme")) {
        std::ifstream f(e.path() / "serial");
        std::string s;
        std::getline(f, s);
        if (trim(s) == serial) {
            out.push_back(e.path().filename());
        }
    }
    std::sort(out.begin(), out.end());
    return out;
}

// The PCI address of a controller, e.g. "0000:00:05.0".
std::string pci_address(const std::string& ctrl) {
    const std::string link =
        std::filesystem::read_symlink("/sys/class/nvme/" + ctrl + "/device").string();
    return link.substr(link.rfind('/') + 1);
}

// The multipath head under verified I/O while its paths' controllers are reset in turn (every
// I/O caught by a reset fails over to the other path, with that path's mapping), then while one
// path's PCI function is removed: no I/O fails, every byte is right. The path comes back with a
// bus rescan.
TEST(StackedFaults, MultipathFailsOverWhenAPathIsResetOrRemoved) {
    ASSERT_TRUE(dmabufio::probe().dmabuf_slots) << dmabufio::probe().why;
    const std::string head = nvme_by_serial("dmabufio-mp");
    const std::vector<std::string> paths = controllers("dmabufio-mp");
    ASSERT_EQ(paths.size(), 2U);
    const Fd f(::open(head.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(f.valid()) << std::strerror(errno);
    Ring ring(VerifiedRounds::kDepth);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, VerifiedRounds::kDepth * VerifiedRounds::kSlot);
    ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
    VerifiedRounds rounds(f.get(), head, table, buf.map());

    std::atomic<bool> stop{false};
    std::atomic<unsigned> resets{0};
    std::string reset_error;
    std::thread resetter([&] {
        for (unsigned i = 0; !stop.load(); i++) {
            try {
                guest::write_str("/sys/class/nvme/" + paths[i % 2] + "/reset_controller", "1");
                resets++;
            } catch (const std::exception& e) {
                reset_error = e.what();  // a reset still running: try the other one
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(150));
        }
    });
    while ((resets.load() < 10 || rounds.ios < 160) && !testing::Test::HasFatalFailure()) {
        rounds.round();
    }
    stop = true;
    resetter.join();
    const std::size_t ios_resets = rounds.ios;

    // One path goes away for good while I/O runs: the head goes on with the other.
    const std::string addr = pci_address(paths[1]);
    std::thread remover([&] { guest::write_str("/sys/bus/pci/devices/" + addr + "/remove", "1"); });
    for (int i = 0; i < 10 && !testing::Test::HasFatalFailure(); i++) {
        rounds.round();
    }
    remover.join();
    EXPECT_EQ(controllers("dmabufio-mp").size(), 1U);
    for (int i = 0; i < 4 && !testing::Test::HasFatalFailure(); i++) {
        rounds.round();
    }
    std::printf(
        "[   counts ] multipath: %u resets, %zu I/Os during them, %zu I/Os across the "
        "removal, %zu bytes verified\n",
        resets.load(), ios_resets, rounds.ios - ios_resets, rounds.verified);
    guest::write_str("/sys/bus/pci/rescan", "1");
    const std::string head_name = head.substr(5);
    // A path is a controller's namespace (nvmeXcYnZ under the controller's sysfs directory); the
    // head sends I/O down it only once its controller is live and the head has set the path live:
    // round-robin skips a path whose ANA state is not set yet, which happens after the path's
    // disk appears. Kernels since 6.15 link such paths under the head's multipath/ directory.
    const std::filesystem::path links = "/sys/block/" + head_name + "/multipath";
    auto live = [](const std::string& ctrl) {
        std::ifstream state("/sys/class/nvme/" + ctrl + "/state");
        std::string st;
        state >> st;
        return st == "live";
    };
    auto paths_of_head = [&] {
        std::size_t n = 0;
        if (std::filesystem::is_directory(links)) {
            for (const auto& e : std::filesystem::directory_iterator(links)) {
                // nvme<subsystem>c<controller>n<namespace>, e.g. nvme2c3n1: controller nvme3
                const std::string name = e.path().filename();
                const std::size_t c = name.find('c', 4);
                n += live("nvme" + name.substr(c + 1, name.find('n', c) - c - 1)) ? 1 : 0;
            }
            return n;
        }
        for (const std::string& ctrl : controllers("dmabufio-mp")) {
            if (!live(ctrl)) {
                continue;
            }
            for (const auto& e : std::filesystem::directory_iterator("/sys/class/nvme/" + ctrl)) {
                const std::string name = e.path().filename();
                n += name.rfind("nvme", 0) == 0 && name.find('c') != std::string::npos ? 1 : 0;
            }
        }
        return n;
    };
    ASSERT_TRUE(guest::wait_until([&] { return paths_of_head() == 2; }, 60))
        << "the removed path did not come back";

    // The path that came back is a new one, which the registration has no mapping for: with the
    // head sending I/O down both paths in turn, the I/O sent down it fails with EINVAL (and reads
    // nothing); registered again, the dma-buf is mapped for both, and every read works.
    guest::write_str("/sys/block/" + head_name + "/device/iopolicy", "round-robin");
    // 16 reads into 16 pieces of the buffer in a row (the head alternates paths per I/O), then
    // checked against the ordinary path.
    auto reads = [&](unsigned& ok, unsigned& einval) {
        constexpr std::size_t kPiece = 64 * kKiB;
        auto view = buf.map();
        std::memset(view.data(), 0, 16 * kPiece);
        std::vector<int> res(16);
        for (unsigned i = 0; i < 16; i++) {
            res[i] = table.read(f.get(), 0, i * kPiece, kPiece, i * kPiece);
        }
        guest::Memory want(16 * kPiece);
        guest::Reference(head).read(want.data(), 16 * kPiece, 0);
        ok = einval = 0;
        for (unsigned i = 0; i < 16; i++) {
            if (res[i] == -EINVAL) {
                einval++;
                continue;
            }
            ASSERT_EQ(res[i], static_cast<int>(kPiece)) << "read " << i;
            ASSERT_EQ(std::memcmp(view.data() + i * kPiece, want.data() + i * kPiece, kPiece), 0)
                << "read " << i;
            ok++;
        }
    };
    unsigned ok = 0;
    unsigned einval = 0;
    reads(ok, einval);
    EXPECT_GT(einval, 0U) << "no I/O went down the new path";
    EXPECT_GT(ok, 0U) << "no I/O went down the old path";
    std::printf("[   counts ] a path added after registration: %u reads EINVAL, %u read\n", einval,
                ok);
    table.clear(0);
    ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
    reads(ok, einval);
    EXPECT_EQ(einval, 0U);
    EXPECT_EQ(ok, 16U);
    guest::write_str("/sys/block/" + head_name + "/device/iopolicy", "numa");
}

// A leg of a dm-stripe removed (its PCI function) under a live registration with reads in flight:
// the reads end (in full, or with EIO), later I/O fails with EIO on the removed leg's chunks and
// reads the right bytes on the other's; the registration and the table are dropped cleanly and
// the leg comes back with a bus rescan.
TEST(StackedFaults, AStripeLegRemovedUnderIoFailsOnlyItsChunks) {
    ASSERT_TRUE(dmabufio::probe().dmabuf_slots) << dmabufio::probe().why;
    const std::string b = nvme_b();
    const std::string b_ctrl = b.substr(5, b.find('n', 9) - 5);  // "/dev/nvme1n1" -> "nvme1"
    const std::string addr = pci_address(b_ctrl);
    Teardown teardown;
    teardown.add("echo 1 > /sys/bus/pci/rescan");  // after the table is gone: the leg comes back
    dm_create(teardown, "dmabufio-stripe", stripe_table());
    constexpr std::size_t kChunk = kChunkKiB * kKiB;
    guest::Memory data(16 * kChunk);
    guest::fill(data.data(), data.size(), 9);
    guest::Reference("/dev/mapper/dmabufio-stripe").write(data.data(), data.size(), 0);
    unsigned inflight_ok = 0;
    unsigned inflight_eio = 0;
    {
        const Fd f(::open("/dev/mapper/dmabufio-stripe", O_RDWR | O_DIRECT | O_CLOEXEC));
        ASSERT_TRUE(f.valid()) << std::strerror(errno);
        Ring ring(32);
        BufferTable table(ring, 1);
        DmaBuf buf = DmaBuf::allocate(Exporter::kTest, 16 * kChunk);
        ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
        for (unsigned i = 0; i < 16; i++) {
            table.prep(false, f.get(), 0, i * kChunk, kChunk, i * kChunk, i);
        }
        ASSERT_EQ(io_uring_submit(ring.get()), 16);
        guest::write_str("/sys/bus/pci/devices/" + addr + "/remove", "1");
        for (unsigned i = 0; i < 16; i++) {
            auto [ud, res] = ring.submit_and_wait_one();
            if (res == static_cast<int>(kChunk)) {
                inflight_ok++;
            } else {
                EXPECT_EQ(res, -EIO) << "chunk " << ud;
                inflight_eio++;
            }
        }
        // Chunk i of the stripe lies on leg i % 2: leg B's fail, leg A's read right.
        auto view = buf.map();
        for (unsigned i = 0; i < 16; i++) {
            const int res = table.read(f.get(), 0, i * kChunk, kChunk, i * kChunk);
            if (i % 2 == 1) {
                EXPECT_EQ(res, -EIO) << "chunk " << i << " on the removed leg";
            } else {
                ASSERT_EQ(res, static_cast<int>(kChunk)) << "chunk " << i;
                EXPECT_EQ(std::memcmp(view.data() + i * kChunk, data.data() + i * kChunk, kChunk),
                          0)
                    << "chunk " << i;
            }
        }
    }
    std::printf("[   counts ] leg removed with 16 reads in flight: %u completed, %u EIO\n",
                inflight_ok, inflight_eio);
    teardown.now(kDmsetup + "remove dmabufio-stripe");
    guest::write_str("/sys/bus/pci/rescan", "1");
    EXPECT_TRUE(guest::wait_until(
        [] {
            try {
                return ::access(nvme_b().c_str(), F_OK) == 0;
            } catch (const std::runtime_error&) {
                return false;  // its namespace not scanned yet
            }
        },
        60))
        << "the removed leg did not come back";
}

// An md array and a dm table stay busy while a registration holds them (the slot holds the
// target file, also once the program closed it): stopping or removing them fails with EBUSY and
// the I/O goes on; once the slot is cleared they go away. A ring closed with I/O in flight, and a
// process killed with I/O in flight, leave nothing behind either.
TEST(StackedFaults, StacksStayWhileRegisteredAndGoOnceRingsCloseOrProcessesDie) {
    ASSERT_TRUE(dmabufio::probe().dmabuf_slots) << dmabufio::probe().why;
    // The md array over a and b, the dm table over c and d.
    Teardown teardown;
    md_create(teardown, "0", nvme_a() + " " + nvme_b(), "--chunk=" + std::to_string(kChunkKiB));
    const std::string c = nvme_by_serial("dmabufio2");
    const std::string d = nvme_by_serial("dmabufio3");
    dm_create(teardown, "dmabufio-linear",
              "0 " + sectors(kHalf) + " linear " + c + " 0\n" + sectors(kHalf) + " " +
                  sectors(kHalf) + " linear " + d + " 0");
    for (const std::string& dev : {std::string(kMd), std::string("/dev/mapper/dmabufio-linear")}) {
        const bool md = dev == kMd;
        const std::string stop_cmd =
            md ? "mdadm --stop " + dev : kDmsetup + "remove dmabufio-linear";
        Ring ring(32);
        BufferTable table(ring, 1);
        DmaBuf buf = DmaBuf::allocate(Exporter::kTest, 2 * kMiB);
        const ino_t ino = inode_of(buf);
        {
            const Fd f(::open(dev.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
            ASSERT_TRUE(f.valid()) << dev << ": " << std::strerror(errno);
            ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
        }
        auto [st, out] = guest::run_command(stop_cmd);
        EXPECT_NE(st, 0) << stop_cmd << " succeeded under a registration:\n" << out;
        // The ring goes with 32 reads in flight.
        {
            const Fd f(::open(dev.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
            ASSERT_TRUE(f.valid());
            Ring ring2(32);
            BufferTable table2(ring2, 1);
            ASSERT_EQ(table2.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
            for (unsigned i = 0; i < 32; i++) {
                table2.prep(false, f.get(), 0, std::size_t{i} * 64 * kKiB, 64 * kKiB,
                            std::size_t{i} * 256 * kKiB, i);
            }
            ASSERT_EQ(io_uring_submit(ring2.get()), 32);
        }
        // So does a process, killed with them in flight.
        const pid_t child = ::fork();
        ASSERT_GE(child, 0);
        if (child == 0) {
            try {
                const Fd f(::open(dev.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
                Ring ring3(32);
                BufferTable table3(ring3, 1);
                if (table3.register_dmabuf(0, buf, f.get()) != SlotKind::kDmaBuf) {
                    ::_exit(2);
                }
                for (unsigned i = 0; i < 32; i++) {
                    table3.prep(i % 2 == 0, f.get(), 0, std::size_t{i} * 64 * kKiB, 64 * kKiB,
                                std::size_t{i} * 256 * kKiB, i);
                }
                ::io_uring_submit(ring3.get());
                ::kill(::getpid(), SIGKILL);
            } catch (...) {
                ::_exit(3);
            }
            ::_exit(4);
        }
        int status = 0;
        ASSERT_EQ(::waitpid(child, &status, 0), child);
        EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
        // Only the first ring's registration is left: one mapping per NVMe.
        EXPECT_TRUE(guest::wait_until([&] { return guest::attached_devices(ino) == 2; }, 10))
            << guest::attached_devices(ino) << " devices attached";
        table.clear(0);
        EXPECT_TRUE(guest::wait_until([&] { return guest::attached_devices(ino) == 0; }, 10))
            << guest::attached_devices(ino) << " devices still attached";
        teardown.now(stop_cmd);
    }
}

// One dma-buf registered against four NVMe at once (a slot each, each slot its own mapping for
// its controller), I/O striped over them in 128 KiB pieces from and to the one buffer, at depth 32
// while the buffer moves every 20 ms: every piece read is checked against what the ordinary path
// wrote on its device, every piece written read back from it.
TEST(StackedSpread, OneDmaBufStripedOverFourNvme) {
    ASSERT_TRUE(dmabufio::probe().dmabuf_slots) << dmabufio::probe().why;
    constexpr unsigned kDevs = 4;
    constexpr std::size_t kPiece = 128 * kKiB;
    constexpr unsigned kDepth = 32;
    constexpr std::size_t kBuf = kDepth * kPiece;  // 4 MiB: one stripe row is 512 KiB
    constexpr std::size_t kArea = 16 * kMiB;       // per device
    std::vector<Fd> fds;
    std::vector<guest::Reference> plain;
    guest::Memory data(kDevs * kArea);  // device d's contents at d * kArea
    for (unsigned d = 0; d < kDevs; d++) {
        const std::string dev = nvme_by_serial("dmabufio" + std::to_string(d));
        fds.emplace_back(::open(dev.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
        ASSERT_TRUE(fds.back().valid()) << dev << ": " << std::strerror(errno);
        plain.emplace_back(dev);
        guest::fill(data.data() + d * kArea, kArea, 100 + d);
        plain.back().write(data.data() + d * kArea, kArea, 0);
    }
    Ring ring(kDepth);
    BufferTable table(ring, kDevs);
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kBuf);
    const ino_t ino = inode_of(buf);
    for (unsigned d = 0; d < kDevs; d++) {
        ASSERT_EQ(table.register_dmabuf(d, buf, fds[d].get()), SlotKind::kDmaBuf);
    }
    EXPECT_EQ(guest::attached_devices(ino), static_cast<int>(kDevs));
    auto view = buf.map();
    guest::PeriodicMover mover(buf.fd(), std::chrono::milliseconds(20));
    std::mt19937_64 gen(5);
    guest::Memory back(kPiece);
    std::size_t ios = 0;
    std::size_t verified = 0;
    for (int round = 0; round < 24 && !HasFatalFailure(); round++) {
        // Piece i of the buffer goes to device i % 4, at stripe row i / 4 of a random region.
        const bool write = round % 2 == 1;
        const std::uint64_t base = (gen() % (kArea / kBuf)) * (kBuf / kDevs);
        if (write) {
            guest::fill(view.data(), kBuf, gen());
        }
        for (unsigned i = 0; i < kDepth; i++) {
            table.prep(write, fds[i % kDevs].get(), i % kDevs, i * kPiece, kPiece,
                       base + (i / kDevs) * kPiece, i);
        }
        for (unsigned i = 0; i < kDepth; i++) {
            auto [ud, res] = ring.submit_and_wait_one();
            ASSERT_LT(ud, kDepth);
            ASSERT_EQ(res, static_cast<int>(kPiece)) << "piece " << ud;
            ios++;
        }
        for (unsigned i = 0; i < kDepth; i++) {
            const unsigned d = i % kDevs;
            const std::uint64_t at = base + (i / kDevs) * kPiece;
            if (write) {
                std::memcpy(data.data() + d * kArea + at, view.data() + i * kPiece, kPiece);
                plain[d].read(back.data(), kPiece, at);
                ASSERT_EQ(std::memcmp(back.data(), data.data() + d * kArea + at, kPiece), 0)
                    << "piece " << i << " written to device " << d;
            } else {
                ASSERT_EQ(
                    std::memcmp(view.data() + i * kPiece, data.data() + d * kArea + at, kPiece), 0)
                    << "piece " << i << " read from device " << d;
            }
            verified += kPiece;
        }
    }
    const unsigned moves = mover.stop();
    EXPECT_EQ(mover.error(), "");
    EXPECT_GT(moves, 0U);
    std::printf("[          ] 4 NVMe: %zu I/Os, %zu bytes verified, %u moves\n", ios, verified,
                moves);
}

}  // namespace
