#include "dmabufio/error.hpp"

#include <cstdlib>

namespace dmabufio {

void throw_error(int err, std::string_view action, std::string_view advice) {
    std::string what(action);
    if (!advice.empty()) {
        what += " (";
        what += advice;
        what += ")";
    }
    throw Error(std::abs(err), what);
}

}  // namespace dmabufio
