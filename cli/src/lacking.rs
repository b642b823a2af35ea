//! Required fields an input lacks that the options could give (`--set`, `PROVISIONER_PASSWORD`,
//! the template options): reported with the options that give them, once for a batch file
//! none of whose rows has one (not once a row), at each row that lacks it otherwise.

use serde_json::{Map, Value};

use crate::{exit::Problem, fields::FIELDS};

/// A required field the options could give, or the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needed {
    Field(&'static str),
    Template,
}

/// Every `Needed`, in the order they are reported.
const NEEDED: [Needed; 7] = [
    Needed::Field("tenantName"),
    Needed::Field("firstName"),
    Needed::Field("lastName"),
    Needed::Field("loginId"),
    Needed::Field("password"),
    Needed::Field("email"),
    Needed::Template,
];

/// Where the input came from: a create's options, or a batch file's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Create,
    Batch,
}

impl Needed {
    /// Whether `item` (filled from the options) lacks it: `null` is absent, as the API takes it.
    fn lacked_by(self, item: &Map<String, Value>) -> bool {
        match self {
            Self::Field(f) => matches!(item.get(f), None | Some(Value::Null)),
            Self::Template => !item.contains_key("templateUrl") && !item.contains_key("templateId"),
        }
    }

    /// Whether `problem` is one `fields::check` reports for an item that lacks it.
    fn covers(self, problem: &Problem) -> bool {
        match self {
            Self::Field(f) => problem.field == f,
            Self::Template => matches!(problem.field.as_str(), "templateUrl" | "templateId"),
        }
    }

    /// The one problem that says it is missing and which options give it.
    fn problem(self, input: Input) -> Problem {
        let options = match self {
            Self::Field("password") => {
                "--set password=VALUE or the PROVISIONER_PASSWORD variable".to_owned()
            }
            Self::Field(f) => format!("--set {f}=VALUE"),
            Self::Template => "--template-url U, --template-id ID or --template FILE.zip".into(),
        };
        match (self, input) {
            (Self::Field(f), Input::Create) => {
                Problem::new(f, format!("is required: give {options}"))
            }
            (Self::Field(f), Input::Batch) => Problem::new(
                f,
                format!("is required and no row has one: add it to the file or give {options}"),
            ),
            (Self::Template, Input::Create) => {
                Problem::new("", format!("a template is required: give {options}"))
            }
            (Self::Template, Input::Batch) => Problem::new(
                "",
                format!(
                    "no row names a template (templateUrl or templateId): add one to the file \
                     or give {options}"
                ),
            ),
        }
    }
}

/// A create's `problems` (of its body `item`), with the faults of each required field it lacks
/// replaced by one problem naming the options that give it.
pub fn name_options(item: &Map<String, Value>, mut problems: Vec<Problem>) -> Vec<Problem> {
    for needed in NEEDED.into_iter().filter(|n| n.lacked_by(item)) {
        if let Some(first) = problems.iter().position(|p| needed.covers(p)) {
            problems.retain(|p| !needed.covers(p));
            problems.insert(first, needed.problem(Input::Create));
        }
    }
    problems
}

/// The faults of a batch file's rows, gathered as they are read: the first `limit` of them by
/// line, but a required field that no row has as one problem ahead of them.
pub struct RowFaults {
    limit: usize,
    /// Rows whose fields were read.
    read: u64,
    /// Rows with a fault.
    bad: u64,
    /// Faults other than a lacking field's, the first `limit`.
    others: Vec<Problem>,
    /// By `NEEDED`: the rows that lacked it, and the first `limit` faults that made.
    lacking: [(u64, Vec<Problem>); NEEDED.len()],
}

impl RowFaults {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            read: 0,
            bad: 0,
            others: Vec::new(),
            lacking: Default::default(),
        }
    }

    /// A row whose fields could not be read (not JSON, a wrong number of cells).
    pub fn unread(&mut self, line: u64, problem: Problem) {
        self.bad += 1;
        if self.others.len() < self.limit {
            self.others.push(problem.at_line(line));
        }
    }

    /// A row read: its `item`, filled from the options, and its faults (none: a good row).
    pub fn read(&mut self, line: u64, item: &Map<String, Value>, problems: Vec<Problem>) {
        self.read += 1;
        if problems.is_empty() {
            return;
        }
        self.bad += 1;
        let lacked = NEEDED.map(|n| n.lacked_by(item));
        for (rows, _) in self.lacking.iter_mut().zip(lacked).filter(|(_, l)| *l) {
            rows.0 += 1;
        }
        for problem in problems {
            let problem = problem.at_line(line);
            let slot = NEEDED
                .iter()
                .zip(&lacked)
                .position(|(n, lacked)| *lacked && n.covers(&problem));
            let list = match slot {
                Some(i) => &mut self.lacking[i].1,
                None => &mut self.others,
            };
            if list.len() < self.limit {
                list.push(problem);
            }
        }
    }

    /// How many rows have a fault.
    pub fn bad_rows(&self) -> u64 {
        self.bad
    }

    /// The faults to report: a required field no row has once, with the options that give it;
    /// then the others by line (in the order of the fields within a line), `limit` in all.
    pub fn into_problems(self) -> Vec<Problem> {
        let mut once = Vec::new();
        let mut rest = self.others;
        for (needed, (rows, problems)) in NEEDED.into_iter().zip(self.lacking) {
            if self.read > 0 && rows == self.read {
                once.push(needed.problem(Input::Batch));
            } else {
                rest.extend(problems);
            }
        }
        rest.sort_by_key(|p| (p.line, FIELDS.iter().position(|f| *f == p.field)));
        once.extend(rest);
        once.truncate(self.limit);
        once
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::check;
    use serde_json::json;

    fn item(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_create_lacking_fields_names_the_options_once_each() {
        let body = item(
            json!({"tenantName": "Acme", "firstName": "Ada", "lastName": "L",
            "loginId": "admin", "email": "nope"}),
        );
        let shown: Vec<String> = name_options(&body, check(&body, false))
            .iter()
            .map(Problem::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "email: must be a valid e-mail address",
                "password: is required: give --set password=VALUE or the PROVISIONER_PASSWORD variable",
                "a template is required: give --template-url U, --template-id ID or --template FILE.zip",
            ]
        );
    }

    #[test]
    fn only_a_field_every_read_row_lacks_is_reported_once() {
        let mut faults = RowFaults::new(100);
        let lacks_both = item(json!({"tenantUrl": "a.example"}));
        let has_password = item(json!({"tenantUrl": "b.example", "password": "long enough"}));
        faults.read(2, &lacks_both, check(&lacks_both, true));
        faults.unread(3, Problem::new("", "not valid JSON"));
        faults.read(4, &has_password, check(&has_password, true));
        assert_eq!(faults.bad_rows(), 3);
        let problems = faults.into_problems();
        let once: Vec<&Problem> = problems.iter().filter(|p| p.line.is_none()).collect();
        // tenantName .. email but password, and the template: the unread row counts for none.
        assert_eq!(once.len(), 6, "{problems:?}");
        assert!(once.iter().all(|p| p.field != "password"), "{once:?}");
        let at: Vec<(Option<u64>, &str)> = problems
            .iter()
            .filter(|p| p.line.is_some())
            .map(|p| (p.line, p.field.as_str()))
            .collect();
        assert_eq!(at, [(Some(2), "password"), (Some(3), "")]);
    }
}
