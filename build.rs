//! Build metadata for `omnibind --version`: the git commit (`VERGEN_GIT_SHA`, with
//! `VERGEN_GIT_DIRTY`) and the enabled cargo features (`VERGEN_CARGO_FEATURES`). Outside a git
//! checkout the commit reads as unknown.

use vergen_gitcl::{CargoBuilder, Emitter, GitclBuilder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cargo = CargoBuilder::default().features(true).build()?;
    let git = GitclBuilder::default().sha(true).dirty(false).build()?;
    Emitter::default()
        .add_instructions(&cargo)?
        .add_instructions(&git)?
        .emit()?;
    Ok(())
}
