#include "auth/webhook_signature.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>

#include <cstdlib>

namespace flowd::auth {

std::string Base64(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(n);
  return out;
}

std::optional<std::string> WebhookKey(std::string_view secret) {
  constexpr std::string_view kPrefix = "whsec_";
  if (!secret.starts_with(kPrefix)) return std::nullopt;
  std::string_view b64 = secret.substr(kPrefix.size());
  if (b64.empty() || b64.size() % 4 != 0) return std::nullopt;
  std::string out(3 * b64.size() / 4, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(b64.data()), static_cast<int>(b64.size()));
  if (n < 0) return std::nullopt;
  // EVP_DecodeBlock counts padding as zero bytes: drop them.
  size_t pad = (b64.back() == '=') + (b64.size() > 1 && b64[b64.size() - 2] == '=');
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

namespace {

// One HMAC-SHA256 context per thread, its digest set once: setting "SHA256" by name in
// every EVP_MAC_init made OpenSSL look the digest up each time (about 9,000 instructions
// of a 20,000-instruction signature). Each use re-keys it.
struct MacContext {
  MacContext() {
    static EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    ctx = mac ? EVP_MAC_CTX_new(mac) : nullptr;
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    if (!ctx || !EVP_MAC_CTX_set_params(ctx, params)) std::abort();
  }
  ~MacContext() { EVP_MAC_CTX_free(ctx); }
  EVP_MAC_CTX* ctx;
};

}  // namespace

std::string HmacSha256(std::string_view key, std::string_view data) {
  thread_local MacContext mac;
  unsigned char out[EVP_MAX_MD_SIZE];
  size_t len = 0;
  if (!EVP_MAC_init(mac.ctx, reinterpret_cast<const unsigned char*>(key.data()), key.size(), nullptr) ||
      !EVP_MAC_update(mac.ctx, reinterpret_cast<const unsigned char*>(data.data()), data.size()) ||
      !EVP_MAC_final(mac.ctx, out, &len, sizeof out)) {
    std::abort();  // a signature that silently fails would be worse than none
  }
  return std::string(reinterpret_cast<char*>(out), len);
}

std::string SignWebhook(std::string_view key, std::string_view msg_id, int64_t timestamp, std::string_view body) {
  std::string signed_content;
  signed_content.reserve(msg_id.size() + body.size() + 24);
  signed_content.append(msg_id).append(".").append(std::to_string(timestamp)).append(".").append(body);
  return "v1," + Base64(HmacSha256(key, signed_content));
}

}  // namespace flowd::auth
