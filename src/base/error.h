// A client-facing failure: the `code` and `message` of the JSON error body, plus the
// optional detail fields. Modules below the HTTP layer return these; only the REST layer
// chooses the status code for a `code`.
#pragma once

#include <string>
#include <vector>

namespace flowd {

struct Problem {
  std::string node;
  std::string field;
  std::string problem;
};

struct Error {
  std::string code;     // snake_case, stable: clients branch on it
  std::string message;  // one sentence for people; never a secret
  std::string field;    // optional: the input or field at fault
  std::vector<Problem> details;  // optional: every problem found
};

}  // namespace flowd
