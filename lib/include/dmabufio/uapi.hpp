// The kernel uapi (C and C++): see uapi.h.
#pragma once

#include "dmabufio/uapi.h"  // IWYU pragma: export
