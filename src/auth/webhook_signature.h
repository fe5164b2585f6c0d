// Standard Webhooks signatures: base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
// keyed with the base64-decoded part of a "whsec_..." secret. Pure; any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace flowd::auth {

// The key bytes of a "whsec_<base64>" secret; nullopt when it is not of that form.
std::optional<std::string> WebhookKey(std::string_view secret);

// "v1,<base64 signature>" for one message.
std::string SignWebhook(std::string_view key, std::string_view msg_id, int64_t timestamp, std::string_view body);

// HMAC-SHA256 of `data` under `key`, raw bytes (OpenSSL EVP_MAC).
std::string HmacSha256(std::string_view key, std::string_view data);

std::string Base64(std::string_view bytes);

}  // namespace flowd::auth
