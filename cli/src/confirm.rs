//! Asking before a destructive command: on a terminal, a `[y/N]` question
//! on stderr; without one (a script, CI), the command refuses unless it was
//! given `--yes`, rather than guess.

use std::io::IsTerminal;

use crate::error::Error;

/// Whether to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// `--yes` was given.
    Skip,
    /// Ask on the terminal.
    Ask,
}

impl Confirm {
    /// From `--yes` and whether stdin is a terminal; `what` says what a
    /// script would need `--yes` for ("remove a host").
    pub fn from_flag(yes: bool, what: &str) -> Result<Confirm, Error> {
        decide(yes, std::io::stdin().is_terminal(), what)
    }

    /// Asks `question` when it should; Ok(()) to go on, an error (nothing
    /// done) otherwise.
    pub async fn check(self, question: String, refused: String) -> Result<(), Error> {
        if self == Confirm::Skip {
            return Ok(());
        }
        let confirmed = tokio::task::spawn_blocking(move || ask(&question))
            .await
            .map_err(|e| Error::Failed(format!("the confirmation prompt failed: {e}")))?
            .map_err(|e| Error::Failed(format!("cannot read the answer from stdin: {e}; pass --yes instead")))?;
        if confirmed {
            Ok(())
        } else {
            Err(Error::Failed(refused))
        }
    }
}

/// The rule, apart from the terminal.
fn decide(yes: bool, terminal: bool, what: &str) -> Result<Confirm, Error> {
    match (yes, terminal) {
        (true, _) => Ok(Confirm::Skip),
        (false, true) => Ok(Confirm::Ask),
        (false, false) => Err(Error::Usage(format!("pass --yes to {what} non-interactively"))),
    }
}

fn ask(question: &str) -> std::io::Result<bool> {
    use std::io::Write;
    let mut stderr = std::io::stderr();
    stderr.write_all(question.as_bytes())?;
    stderr.flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_must_say_yes_and_terminals_are_asked() {
        assert_eq!(decide(true, false, "x").expect("yes"), Confirm::Skip);
        assert_eq!(decide(true, true, "x").expect("yes"), Confirm::Skip);
        assert_eq!(decide(false, true, "x").expect("ask"), Confirm::Ask);
        let e = decide(false, false, "delete a release").expect_err("refused");
        assert_eq!(e.to_string(), "pass --yes to delete a release non-interactively");
        assert_eq!(e.exit_code() as u8, 2);
    }
}
