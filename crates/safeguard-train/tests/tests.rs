//! Integration tests of safeguard-train (one binary).

mod common;
mod merge;
mod model_grad;
mod optim;
mod parity;
mod peft_io;
mod sft;
