"""attnbench: decode-time cost of attention configurations, per hardware target."""
