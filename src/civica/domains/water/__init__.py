"""Water: network twin (WNTR), leak detection and localisation, quality events."""
