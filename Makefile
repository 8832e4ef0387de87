# dmabuf-io front door. See README.md.
#   make check   host unit tests, then the guest suites in the VM (debug kernel; strict, lazy, pt)
#   make bench   the benchmark matrix on the perf kernel -> build/bench/results.json, iops.png
#   make kernel  both kernel flavours + patched uapi headers in build/usr/include
#   make vm      an interactive guest shell (debug kernel, strict IOMMU)
#   make fio     Debian's fio with dma-buf buffers (tools/fio/series) -> build/fio/fio
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
JOBS ?= $(shell nproc)
HOST := build/host

# Debian 12 packages the lab needs; installed with apt-get when one is missing (as root).
PACKAGES := build-essential flex bison bc libelf-dev libssl-dev cpio kmod dwarves rsync \
	qemu-system-x86 ccache git xz-utils zstd python3 \
	cmake pkg-config liburing-dev googletest libgtest-dev fio gnuplot-nox \
	clang-format clang-tidy dpkg-dev linux-perf e2fsprogs xfsprogs dmsetup mdadm

.PHONY: all check bench kernel kernel-debug kernel-perf userspace fio vm deps lint clean

all: userspace

deps:
	@missing=$$(for p in $(PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "deps: run as root to apt-get install:" $$missing >&2; exit 1; fi; \
		apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

kernel-debug: deps
	vm/kernel-build debug
kernel-perf: deps
	vm/kernel-build perf
kernel: kernel-debug kernel-perf

userspace: deps
	cmake -S . -B $(HOST) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(HOST) -j $(JOBS)

# fio from Debian's source package (apt-get source, no root) with our patches; rebuilt when the
# pinned version or a patch changes.
fio: deps
	JOBS=$(JOBS) tools/fio/build

check: kernel-debug userspace fio
	ctest --test-dir $(HOST) --output-on-failure -L unit
	@echo "make check: guest suites; every boot's output goes to build/check-guest.log"
	ctest --test-dir $(HOST) -L guest -V -O build/check-guest.log >/dev/null || \
		{ cat build/check-guest.log; echo "make check: a guest suite failed (above)"; exit 1; }
	@grep -h -A1 -E 'Test +#' build/check-guest.log | grep -v '^--$$' | paste - -
	@grep -h -E '\[   counts \]|\[  large \]|bytes verified|kunit-results:|tests passed' build/check-guest.log || true

bench: kernel-perf userspace fio
	tools/bench/matrix

vm: kernel-debug userspace
	vm/run --interactive

# clang-format on C and C++ alike (not tests/unit/uapi/: kernel-style C, as the headers it checks);
# clang-tidy on the C++ and the library's C (examples/*.c keeps a compact style to stay short).
lint: userspace
	clang-format --dry-run --Werror $$(git ls-files '*.cpp' '*.hpp' '*.c' '*.h' ':!:tests/unit/uapi')
	clang-tidy -p $(HOST) --quiet $$(git ls-files '*.cpp' 'lib/*.c')

clean:
	rm -rf $(HOST) build/bench build/vm build/fio
