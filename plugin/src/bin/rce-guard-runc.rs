//! `rce-guard-runc`: containerd's runc `BinaryName`. Merges rce-guard's exec notify rule into
//! the bundle on `create` when the NRI plugin asked for it, then execs the real runtime.
//! `rce-guard-runc --rce-guard-help` explains it; everything else belongs to the runtime.

fn main() -> std::process::ExitCode {
    rce_guard::wrapper::main()
}
