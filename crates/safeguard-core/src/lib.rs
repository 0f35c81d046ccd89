//! SafeGuard core: policies, prompts, verdict parsing, rewards and metrics.
