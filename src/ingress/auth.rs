//! Inbound authentication schemes (hmac-sha256, standard-webhooks, bearer, basic, header).
