// Errors: an errno plus a sentence that tells the user what to do about it.
#pragma once

#include <string>
#include <string_view>
#include <system_error>

namespace dmabufio {

class Error : public std::system_error {
  public:
    // err is a positive errno value; what says what failed and, where we know it, what to do.
    Error(int err, const std::string& what)
        : std::system_error(err, std::system_category(), what) {}
    [[nodiscard]] int err() const noexcept { return code().value(); }
};

// Throws Error for err (positive or negative errno) with "<action>: <strerror>. <advice>".
[[noreturn]] void throw_error(int err, std::string_view action, std::string_view advice = {});

}  // namespace dmabufio
