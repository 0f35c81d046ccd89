//! Integration tests of safeguard-eval (one test binary; fixtures are generated in temp dirs).

mod common;
mod demo;
mod detect;
mod hub;
mod jsonl;
mod llavaguard;
mod report;
mod safeeditbench;
mod summary;
mod unsafebench;
