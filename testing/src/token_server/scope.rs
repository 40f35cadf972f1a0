//! Token scopes as distribution's clients request them, and the policy that
//! decides which of them a token grants. Pure functions: no sockets.

use serde::Serialize;

/// One `access` entry of a registry token: a resource and the actions on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    /// The resource type, e.g. `repository` or `registry`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The resource name, e.g. `lab/hello` or `catalog`.
    pub name: String,
    /// The actions, e.g. `pull`, `push`, `delete` or `*`.
    pub actions: Vec<String>,
}

impl Access {
    /// `repository:<name>` with `actions`.
    pub fn repository(name: &str, actions: &[&str]) -> Self {
        Self {
            kind: "repository".to_owned(),
            name: name.to_owned(),
            actions: actions.iter().map(|action| (*action).to_owned()).collect(),
        }
    }
}

/// Parses `scope` query values. One value may hold several scopes separated
/// by spaces (a cross-repository mount asks for two); malformed scopes are
/// left out.
pub fn parse_scopes<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Access> {
    values
        .into_iter()
        .flat_map(str::split_whitespace)
        .filter_map(parse_scope)
        .collect()
}

/// Parses one `type:name:actions` scope. The type ends at the first colon
/// and the actions start after the last one, so names with a registry port
/// (`repository:host:5000/x:pull`) keep their colon. A resource class, as in
/// `repository(plugin)`, is dropped from the type.
pub fn parse_scope(scope: &str) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let kind = kind.split_once('(').map_or(kind, |(kind, _class)| kind);
    if kind.is_empty() || name.is_empty() {
        return None;
    }
    Some(Access {
        kind: kind.to_owned(),
        name: name.to_owned(),
        actions: actions
            .split(',')
            .filter(|action| !action.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// What a token server grants of what a client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Grant {
    /// Every requested action on every requested resource.
    #[default]
    AllRequested,
    /// Only `pull` on repositories, whatever else was asked for.
    PullOnly,
    /// A token with an empty `access` list: the registry answers `/v2/` but
    /// refuses every repository route.
    Nothing,
    /// The requested actions that some matching rule allows.
    Rules(Vec<GrantRule>),
}

/// Allows `actions` on resources whose name matches `name` to `user` (or
/// to everyone). The resource type is not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRule {
    /// The user this rule is for; `None` for every authenticated user.
    pub user: Option<String>,
    /// An exact name, or a prefix followed by `*` (`lab/*`; `*` alone
    /// matches everything).
    pub name: String,
    /// The allowed actions; `*` allows every action.
    pub actions: Vec<String>,
}

impl GrantRule {
    /// Allows `actions` on `name` (a pattern) to every user.
    pub fn new(name: &str, actions: &[&str]) -> Self {
        Self {
            user: None,
            name: name.to_owned(),
            actions: actions.iter().map(|action| (*action).to_owned()).collect(),
        }
    }

    /// Restricts this rule to `user`.
    pub fn for_user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    fn matches(&self, user: &str, name: &str) -> bool {
        let user_matches = self.user.as_deref().is_none_or(|rule_user| rule_user == user);
        let name_matches = match self.name.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => self.name == name,
        };
        user_matches && name_matches
    }

    fn allows(&self, action: &str) -> bool {
        self.actions.iter().any(|allowed| allowed == "*" || allowed == action)
    }
}

/// The `access` claim for `user` asking for `requested`: resources with no
/// granted action are left out.
pub fn grant(policy: &Grant, user: &str, requested: &[Access]) -> Vec<Access> {
    requested
        .iter()
        .filter_map(|access| {
            let actions: Vec<String> = access
                .actions
                .iter()
                .filter(|action| match policy {
                    Grant::AllRequested => true,
                    Grant::PullOnly => access.kind == "repository" && *action == "pull",
                    Grant::Nothing => false,
                    Grant::Rules(rules) => rules
                        .iter()
                        .any(|rule| rule.matches(user, &access.name) && rule.allows(action)),
                })
                .cloned()
                .collect();
            (!actions.is_empty()).then(|| Access {
                actions,
                ..access.clone()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_like_distribution_clients_send_them() {
        /// The scope, and its type, name and actions if it parses.
        type Case<'a> = (&'a str, Option<(&'a str, &'a str, &'a [&'a str])>);
        let cases: &[Case] = &[
            (
                "repository:lab/hello:pull",
                Some(("repository", "lab/hello", &["pull"])),
            ),
            (
                "repository:lab/x:pull,push",
                Some(("repository", "lab/x", &["pull", "push"])),
            ),
            ("registry:catalog:*", Some(("registry", "catalog", &["*"]))),
            (
                "repository:host:5000/x:pull",
                Some(("repository", "host:5000/x", &["pull"])),
            ),
            (
                "repository(plugin):lab/p:pull",
                Some(("repository", "lab/p", &["pull"])),
            ),
            ("repository:lab/empty:", Some(("repository", "lab/empty", &[]))),
            ("repository", None),
            ("repository:lab", None),
            (":lab:pull", None),
        ];
        for (scope, expected) in cases {
            let parsed = parse_scope(scope);
            let expected = expected.map(|(kind, name, actions)| Access {
                kind: kind.to_owned(),
                name: name.to_owned(),
                actions: actions.iter().map(|a| (*a).to_owned()).collect(),
            });
            assert_eq!(parsed, expected, "{scope}");
        }
    }

    #[test]
    fn one_scope_value_may_carry_several_scopes() {
        let parsed = parse_scopes(["repository:a:pull repository:b:pull,push", "registry:catalog:*"]);
        let names: Vec<&str> = parsed.iter().map(|access| access.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "catalog"]);
    }

    #[test]
    fn grants_follow_the_policy() {
        let requested = parse_scopes(["repository:lab/x:pull,push repository:other/y:pull,push registry:catalog:*"]);
        let names_and_actions = |granted: Vec<Access>| -> Vec<String> {
            granted
                .iter()
                .map(|access| format!("{}:{}", access.name, access.actions.join(",")))
                .collect()
        };
        assert_eq!(
            names_and_actions(grant(&Grant::AllRequested, "u", &requested)),
            ["lab/x:pull,push", "other/y:pull,push", "catalog:*"]
        );
        assert_eq!(
            names_and_actions(grant(&Grant::PullOnly, "u", &requested)),
            ["lab/x:pull", "other/y:pull"]
        );
        assert!(grant(&Grant::Nothing, "u", &requested).is_empty());
        let rules = Grant::Rules(vec![
            GrantRule::new("lab/*", &["pull"]),
            GrantRule::new("lab/x", &["*"]).for_user("admin"),
        ]);
        assert_eq!(names_and_actions(grant(&rules, "u", &requested)), ["lab/x:pull"]);
        assert_eq!(
            names_and_actions(grant(&rules, "admin", &requested)),
            ["lab/x:pull,push"]
        );
    }
}
