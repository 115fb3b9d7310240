//! Who owns a data dir: the packaged controller runs as the system user
//! `fleet-controller`, so a data dir that `init` makes as root for it must
//! be that user's, and a data dir the controller cannot read is reported
//! with the command that fixes it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The data dir of the packaged controller (its unit and postinst name it).
pub const PACKAGED_DATA_DIR: &str = "/var/lib/fleet-controller";
/// The system user the package makes and its unit runs as.
pub const SERVICE_USER: &str = "fleet-controller";

/// A user's ids and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The entry of `name` (or of `uid`) in passwd(5) text.
fn passwd_entry(passwd: &str, matches: impl Fn(&str, u32) -> bool) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let uid = f.nth(1)?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        matches(name, uid).then(|| Account {
            name: name.to_string(),
            uid,
            gid,
        })
    })
}

fn passwd() -> String {
    std::fs::read_to_string("/etc/passwd").unwrap_or_default()
}

/// The name of the user this process runs as (its uid when it has none).
pub fn current_user() -> String {
    let uid = rustix::process::geteuid().as_raw();
    passwd_entry(&passwd(), |_, u| u == uid)
        .map(|a| a.name)
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// What `init` run by `euid` should do about ownership of `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerPlan {
    /// Leave the files to the caller (a user making their own data dir, or
    /// root making one for a controller it runs itself).
    Caller,
    /// Give every file to this account (root making a data dir for the
    /// packaged service, or into a directory someone else owns).
    Give(Account),
    /// Refuse: root is making the packaged data dir before the package
    /// made its user.
    NoServiceUser,
}

/// The decision, from facts only. `dir_owner` is the owner of `dir` when it
/// already exists; `service_user` is the packaged user when it exists.
pub fn plan(euid: u32, dir: &Path, dir_owner: Option<Account>, service_user: Option<Account>) -> OwnerPlan {
    if euid != 0 {
        return OwnerPlan::Caller;
    }
    if let Some(owner) = dir_owner.filter(|o| o.uid != 0) {
        return OwnerPlan::Give(owner);
    }
    if dir == Path::new(PACKAGED_DATA_DIR) {
        return match service_user {
            Some(user) => OwnerPlan::Give(user),
            None => OwnerPlan::NoServiceUser,
        };
    }
    OwnerPlan::Caller
}

/// [`plan`] for this process and the real `dir` (/etc/passwd read once).
pub fn plan_for(dir: &Path) -> OwnerPlan {
    let passwd = passwd();
    let dir_owner = std::fs::metadata(dir).ok().map(|m| {
        let uid = m.uid();
        let name = passwd_entry(&passwd, |_, u| u == uid)
            .map(|a| a.name)
            .unwrap_or_else(|| format!("uid {uid}"));
        Account {
            name,
            uid,
            gid: m.gid(),
        }
    });
    let service_user = passwd_entry(&passwd, |n, _| n == SERVICE_USER);
    plan(rustix::process::geteuid().as_raw(), dir, dir_owner, service_user)
}

/// Gives `dir` and everything below it to `to` (symlinks themselves, not
/// what they point at).
pub fn give_tree(dir: &Path, to: &Account) -> std::io::Result<()> {
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, Some(to.uid), Some(to.gid))?;
        if std::fs::symlink_metadata(&path)?.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// For a file of `data_dir` this process may not read: who runs the
/// controller, and the command that makes the data dir its own. Empty for
/// other errors.
pub fn permission_hint(err: &std::io::Error, data_dir: &Path) -> String {
    if err.kind() != std::io::ErrorKind::PermissionDenied {
        return String::new();
    }
    let user = current_user();
    let data_dir = if data_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        data_dir
    };
    format!(
        " (the controller runs as {user}; when {dir} was made by another user, give it to this one: \
         'sudo chown -R {user}: {dir}')",
        dir = data_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        fleet-controller:x:998:997:fleet controller:/var/lib/fleet-controller:/usr/sbin/nologin\n\
        broken line\n";

    fn user(name: &str, uid: u32, gid: u32) -> Account {
        Account {
            name: name.into(),
            uid,
            gid,
        }
    }

    #[test]
    fn passwd_lines_are_read_by_name_and_by_uid() {
        assert_eq!(
            passwd_entry(PASSWD, |n, _| n == "fleet-controller"),
            Some(user("fleet-controller", 998, 997))
        );
        assert_eq!(
            passwd_entry(PASSWD, |_, u| u == 0).map(|a| a.name).as_deref(),
            Some("root")
        );
        assert_eq!(passwd_entry(PASSWD, |n, _| n == "nobody"), None);
    }

    #[test]
    fn root_gives_the_packaged_data_dir_to_the_service_user() {
        let svc = Some(user(SERVICE_USER, 998, 997));
        let packaged = Path::new(PACKAGED_DATA_DIR);
        // Before the package's postinst made the dir, and after (it is the
        // service user's then).
        assert_eq!(
            plan(0, packaged, None, svc.clone()),
            OwnerPlan::Give(user(SERVICE_USER, 998, 997))
        );
        assert_eq!(
            plan(0, packaged, Some(user("root", 0, 0)), svc.clone()),
            OwnerPlan::Give(user(SERVICE_USER, 998, 997))
        );
        assert_eq!(
            plan(0, packaged, Some(user(SERVICE_USER, 998, 997)), svc),
            OwnerPlan::Give(user(SERVICE_USER, 998, 997))
        );
        // No package yet: refused, not left root-owned.
        assert_eq!(plan(0, packaged, None, None), OwnerPlan::NoServiceUser);
    }

    #[test]
    fn root_gives_an_existing_dir_to_its_owner_and_keeps_its_own_dirs() {
        let alice = user("alice", 1000, 1000);
        assert_eq!(
            plan(0, Path::new("/srv/fleet"), Some(alice.clone()), None),
            OwnerPlan::Give(alice)
        );
        assert_eq!(plan(0, Path::new("/srv/fleet"), None, None), OwnerPlan::Caller);
        assert_eq!(
            plan(0, Path::new("/srv/fleet"), Some(user("root", 0, 0)), None),
            OwnerPlan::Caller
        );
    }

    #[test]
    fn a_user_keeps_what_it_makes() {
        let svc = Some(user(SERVICE_USER, 998, 997));
        assert_eq!(
            plan(998, Path::new(PACKAGED_DATA_DIR), None, svc.clone()),
            OwnerPlan::Caller
        );
        assert_eq!(plan(1000, Path::new("/home/a/fleet"), None, svc), OwnerPlan::Caller);
    }

    #[test]
    fn a_permission_error_names_the_user_and_the_fix() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let hint = permission_hint(&denied, Path::new("/var/lib/fleet-controller"));
        assert!(hint.contains("sudo chown -R "), "{hint}");
        assert!(hint.contains(": /var/lib/fleet-controller'"), "{hint}");
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(permission_hint(&missing, Path::new("/x")), "");
    }
}
