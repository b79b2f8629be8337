//! `corral up` / `corral down`: placeholder until projects land.
use std::process::ExitCode;

use anyhow::{Result, bail};

use super::Ctx;
use crate::cli::{DownArgs, UpArgs};

pub async fn up(_ctx: &Ctx, _args: &UpArgs) -> Result<ExitCode> {
    bail!("corral up is not available yet")
}

pub async fn down(_ctx: &Ctx, _args: &DownArgs) -> Result<ExitCode> {
    bail!("corral down is not available yet")
}
