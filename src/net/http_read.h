// Reading one HTTP message (request or response) from a stream into a Beast parser.
//
// Beast's own async_read runs the parser inside the read operation's completion, where an
// exception (a field longer than Beast can store, for one) escapes io_context::run and
// ends the process. Here the parser runs in the caller's coroutine, so every parser
// failure becomes an error_code. Bytes the parser has seen but cannot use yet (a head,
// chunk line or trailer still incomplete) are capped at `max_unparsed`; more reads as
// header_limit. Body bytes never count: the parser takes them as they come.
#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/beast/http/error.hpp>

#include <algorithm>
#include <stdexcept>

namespace flowd::net {

inline constexpr size_t kReadSize = 64 << 10;

// Reads until done() holds. `deadline()` is asked before every read, so it may grow with
// progress. The stream's lowest layer must be a beast::tcp_stream.
template <typename Stream, typename Parser, typename Deadline, typename Done>
boost::asio::awaitable<boost::system::error_code> ReadParsed(Stream& stream, boost::beast::flat_buffer& buffer,
                                                             Parser& parser, size_t max_unparsed, Deadline deadline,
                                                             Done done) {
  const size_t max_buffered = max_unparsed + kReadSize;
  namespace http = boost::beast::http;
  using boost::system::error_code;
  for (;;) {
    if (done()) co_return error_code{};
    error_code ec;
    if (buffer.size() > 0) {
      size_t used = 0;
      try {
        used = parser.put(buffer.data(), ec);
      } catch (const std::length_error&) {
        ec = http::error::header_limit;
      } catch (const std::exception&) {
        ec = http::error::bad_field;
      }
      buffer.consume(used);
      if (ec && ec != http::error::need_more) co_return ec;
      if (used > 0) continue;
      if (buffer.size() > max_unparsed) co_return error_code(http::error::header_limit);
    }
    boost::beast::get_lowest_layer(stream).expires_at(deadline());
    auto [rec, n] = co_await stream.async_read_some(buffer.prepare(std::min(kReadSize, max_buffered - buffer.size())),
                                                    boost::asio::as_tuple(boost::asio::use_awaitable));
    if (rec == boost::asio::error::eof || rec == boost::asio::ssl::error::stream_truncated) {
      parser.put_eof(ec);
      co_return ec ? ec : (done() ? error_code{} : rec);
    }
    if (rec) co_return rec;
    buffer.commit(n);
  }
}

}  // namespace flowd::net
