//! The callback commands this bridge can publish, by Tencent's name.
//!
//! Tencent POSTs every command an app enabled to the one webhook URL, so the bridge sees commands it
//! does not publish (members joining, messages, "before" callbacks). Only the four below become
//! events; `BRIDGE_COMMANDS` picks which of them do, and every other command is answered without
//! being published (see [`Route`](super::Route)).

use crate::domain::EventType;

/// A Tencent callback command the bridge knows how to turn into an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    CreateGroup,
    GroupInfoChanged,
    ChangeGroupOwner,
    GroupDestroyed,
}

impl Command {
    /// Every publishable command: the default of `BRIDGE_COMMANDS`.
    pub const ALL: [Command; 4] =
        [Command::CreateGroup, Command::GroupInfoChanged, Command::ChangeGroupOwner, Command::GroupDestroyed];

    /// Tencent's name, as in the query's and the body's `CallbackCommand`.
    pub fn name(self) -> &'static str {
        match self {
            Command::CreateGroup => "Group.CallbackAfterCreateGroup",
            Command::GroupInfoChanged => "Group.CallbackAfterGroupInfoChanged",
            Command::ChangeGroupOwner => "Group.CallbackAfterChangeGroupOwner",
            Command::GroupDestroyed => "Group.CallbackAfterGroupDestroyed",
        }
    }

    /// The command of that exact name (Tencent's names are case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The event it becomes.
    pub fn event_type(self) -> EventType {
        match self {
            Command::CreateGroup => EventType::Created,
            Command::GroupInfoChanged => EventType::InfoChanged,
            Command::ChangeGroupOwner => EventType::OwnerChanged,
            Command::GroupDestroyed => EventType::Destroyed,
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_reads_back_from_its_name_and_nothing_else_does() {
        for c in Command::ALL {
            assert_eq!(Command::from_name(c.name()), Some(c));
        }
        for other in ["Group.CallbackAfterNewMemberJoin", "group.callbackaftercreategroup", "", "Group."] {
            assert_eq!(Command::from_name(other), None, "{other}");
        }
    }
}
