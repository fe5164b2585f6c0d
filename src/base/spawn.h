// Starting a detached coroutine whose failure is never silent: an escaped exception is
// logged with the task's name. Any thread.
#pragma once

#include <boost/asio/co_spawn.hpp>

#include <exception>
#include <string>

#include "base/log.h"

namespace flowd {

// `where` is an executor or an execution context.
template <typename Where, typename Awaitable>
void SpawnLogged(Where&& where, Awaitable&& task, const char* name) {
  boost::asio::co_spawn(std::forward<Where>(where), std::forward<Awaitable>(task), [name](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      Log(LogLevel::kError, "task failed", {{"task", name}, {"error", ex.what()}});
    } catch (...) {
      Log(LogLevel::kError, "task failed", {{"task", name}});
    }
  });
}

}  // namespace flowd
