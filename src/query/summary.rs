//! Summaries: `select` with aggregates (PostgREST's `count()`, `amount.sum()`, `total:amount.sum()`), every
//! plain column in it a group. A summary is read as a relation of its own — the grouped query, its output
//! columns described like a dataset's — so ordering, pages, counts and every format work on it unchanged.
//!
//! Aliases are output names only: in SQL the output columns are `s1`, `s2`, …, so no request text becomes
//! an identifier.

use std::fmt;

use super::params::ParamError;
use crate::dataset::{Columnar, Consistency, Dataset, Operators, Scalar, ValueKind, ValueType};

/// An aggregate function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Function {
    /// `count()` (rows) or `col.count()` (non-null values).
    Count,
    /// `col.sum()`.
    Sum,
    /// `col.avg()`.
    Avg,
    /// `col.min()`.
    Min,
    /// `col.max()`.
    Max,
}

impl Function {
    fn from_name(name: &str) -> Option<Function> {
        Some(match name {
            "count" => Function::Count,
            "sum" => Function::Sum,
            "avg" => Function::Avg,
            "min" => Function::Min,
            "max" => Function::Max,
            _ => return None,
        })
    }

    /// Its name, which is also the output name of an item without an alias (as PostgREST names them).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Function::Count => "count",
            Function::Sum => "sum",
            Function::Avg => "avg",
            Function::Min => "min",
            Function::Max => "max",
        }
    }
}

/// One `select` item of a summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// A plain column (an index into the dataset's columns): a group.
    Group(usize),
    /// An aggregate of a column, or of rows (`count()`).
    Aggregate(Function, Option<usize>),
}

impl fmt::Display for Item {
    /// A stable signature, for cursors: `g<column>` or `<function>(<column>|*)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Group(column) => write!(f, "g{column}"),
            Item::Aggregate(function, Some(column)) => write!(f, "{}({column})", function.name()),
            Item::Aggregate(function, None) => write!(f, "{}(*)", function.name()),
        }
    }
}

/// One parsed `select` item: `[alias:]column`, `[alias:]count()` or `[alias:]column.function()`.
pub(crate) struct Selected {
    pub(crate) item: Item,
    pub(crate) alias: Option<String>,
}

/// A summary of a dataset: its items, and its output as a dataset of its own (no key; its relation is
/// built per request, with the filters' parameters).
#[derive(Clone, Debug)]
pub(crate) struct Summary {
    items: Vec<Item>,
    /// One column per item, in `select` order, named as clients see them.
    pub(crate) output: Dataset,
}

fn reject(reason: impl Into<String>) -> ParamError {
    ParamError {
        parameter: "select".to_owned(),
        reason: reason.into(),
    }
}

/// Whether `text` names an aggregate (`count()`, `x.sum()`, with or without an alias): a `select` with one
/// is a summary.
pub(crate) fn is_aggregate(text: &str) -> bool {
    text.trim_end().ends_with("()")
}

/// Parses one `select` item. `column` finds a column by name.
pub(crate) fn parse_item(
    text: &str,
    column: impl Fn(&str) -> Result<usize, ParamError>,
) -> Result<Selected, ParamError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(reject("has an empty column name"));
    }
    // A column whose name has a colon or ends in `()` is still found by its whole name.
    if let Ok(index) = column(text) {
        return Ok(Selected {
            item: Item::Group(index),
            alias: None,
        });
    }
    let (alias, target) = match text.split_once(':') {
        Some((alias, target)) if is_aggregate(target) => (Some(alias.trim()), target.trim()),
        Some(_) => {
            return Err(reject(format!(
                "{text:?}: an alias names an aggregate (total:amount.sum()); columns keep their names"
            )));
        }
        None => (None, text),
    };
    if let Some(alias) = alias
        && (alias.is_empty() || !alias.chars().all(|c| c.is_alphanumeric() || c == '_'))
    {
        return Err(reject(format!("alias {alias:?} may hold only letters, digits and '_'")));
    }
    let Some(call) = target.strip_suffix("()") else {
        return Err(column(target)
            .err()
            .unwrap_or_else(|| reject(format!("{text:?} is not a column"))));
    };
    let (column_name, function_name) = match call.rsplit_once('.') {
        Some((column_name, function_name)) => (Some(column_name), function_name),
        None => (None, call),
    };
    let function = Function::from_name(function_name).ok_or_else(|| {
        reject(format!(
            "unknown aggregate {function_name:?} (count, sum, avg, min, max)"
        ))
    })?;
    let column = match column_name {
        None if function == Function::Count => None,
        None => {
            return Err(reject(format!(
                "{function_name}() needs a column: amount.{function_name}()"
            )));
        }
        Some(name) => Some(column(name)?),
    };
    Ok(Selected {
        item: Item::Aggregate(function, column),
        alias: alias.map(str::to_owned),
    })
}

/// `count`'s result.
fn bigint() -> ValueType {
    ValueType {
        type_name: "bigint".into(),
        cast_type: "bigint".into(),
        kind: ValueKind::Int,
        columnar: Columnar {
            scalar: Scalar::Int64,
            list: false,
        },
        output_function: "pg_catalog.int8out".into(),
        operators: Operators::ALL,
    }
}

impl Summary {
    /// The summary of `dataset` that `selected` asks for, its types checked: `sum` and `avg` need a type
    /// with that aggregate, `min` and `max` one with an ordering, and a group a type that can be sorted.
    pub(crate) fn new(dataset: &Dataset, selected: Vec<Selected>) -> Result<Summary, ParamError> {
        let mut items = Vec::new();
        let mut columns: Vec<crate::dataset::Column> = Vec::new();
        for (index, Selected { item, alias }) in selected.into_iter().enumerate() {
            let ident = format!("s{}", index + 1);
            let column = match item {
                Item::Group(c) => {
                    let source = &dataset.columns[c];
                    if !source.operators.sortable {
                        return Err(reject(format!(
                            "{:?} is of type {}, which cannot be grouped (it has no ordering)",
                            source.name, source.type_name
                        )));
                    }
                    let mut column = source.clone();
                    column.ident = ident;
                    column
                }
                Item::Aggregate(function, of) => {
                    let name = alias.unwrap_or_else(|| function.name().to_owned());
                    let (value, nullable) = match (function, of.map(|c| &dataset.columns[c])) {
                        (Function::Count, _) => (bigint(), false),
                        (_, None) => unreachable!("only count() takes no column"),
                        (Function::Sum | Function::Avg, Some(source)) => {
                            let returned = if function == Function::Sum {
                                &source.aggregates.sum
                            } else {
                                &source.aggregates.avg
                            };
                            let value = returned.clone().ok_or_else(|| {
                                reject(format!(
                                    "{}() needs a number, money or interval; {:?} is of type {}",
                                    function.name(),
                                    source.name,
                                    source.type_name
                                ))
                            })?;
                            (value, true)
                        }
                        (Function::Min | Function::Max, Some(source)) => {
                            if !source.aggregates.min_max {
                                return Err(reject(format!(
                                    "{}() needs a type with an ordering that has it; {:?} is of type {}",
                                    function.name(),
                                    source.name,
                                    source.type_name
                                )));
                            }
                            (source.value_type(), true)
                        }
                    };
                    crate::dataset::Column::derived(name, ident, value, nullable)
                }
            };
            if columns.iter().any(|c| c.name == column.name) {
                return Err(reject(format!(
                    "two items are named {:?}; name them apart with aliases (total:amount.sum())",
                    column.name
                )));
            }
            items.push(item);
            columns.push(column);
        }
        Ok(Summary {
            items,
            output: Dataset {
                name: dataset.name.clone(),
                relation: String::new(),
                columns,
                key: None,
                consistency: Consistency::Snapshot,
                aggregates: false,
                max_cost: None,
            },
        })
    }

    /// The output columns that are groups: together they identify a row of the summary.
    pub(crate) fn groups(&self) -> impl Iterator<Item = usize> + '_ {
        self.items
            .iter()
            .enumerate()
            .filter(|(_, item)| matches!(item, Item::Group(_)))
            .map(|(index, _)| index)
    }

    /// The output column an `order` term names by function: `count()` or `amount.sum()`.
    pub(crate) fn find_call(&self, dataset: &Dataset, call: &str) -> Option<&str> {
        let (column, function) = match call.rsplit_once('.') {
            Some((column, function)) => (dataset.columns.iter().position(|c| c.name == column), function),
            None => (None, call),
        };
        let wanted = Item::Aggregate(Function::from_name(function)?, column);
        let index = self.items.iter().position(|&item| item == wanted)?;
        Some(&self.output.columns[index].name)
    }

    /// `(SELECT … FROM <relation> AS t <where> GROUP BY …)`: the summary of `dataset`'s rows that `where_sql`
    /// keeps, as a derived table.
    pub(crate) fn relation(&self, dataset: &Dataset, where_sql: &str) -> String {
        let target = |column: usize| format!("t.{}", dataset.columns[column].ident);
        let expressions: Vec<String> = self
            .items
            .iter()
            .zip(&self.output.columns)
            .map(|(item, output)| {
                let expression = match *item {
                    Item::Group(column) => target(column),
                    Item::Aggregate(Function::Count, None) => "pg_catalog.count(*)".to_owned(),
                    Item::Aggregate(function, Some(column)) => {
                        format!("pg_catalog.{}({})", function.name(), target(column))
                    }
                    Item::Aggregate(_, None) => unreachable!("only count() takes no column"),
                };
                format!("{expression} AS {}", output.ident)
            })
            .collect();
        let groups: Vec<String> = self
            .items
            .iter()
            .filter_map(|item| match *item {
                Item::Group(column) => Some(target(column)),
                Item::Aggregate(..) => None,
            })
            .collect();
        let group_by = if groups.is_empty() {
            String::new()
        } else {
            format!(" GROUP BY {}", groups.join(", "))
        };
        format!(
            "(SELECT {} FROM {} AS t{where_sql}{group_by})",
            expressions.join(", "),
            dataset.relation
        )
    }

    /// A stable signature of the items, for cursors.
    pub(crate) fn signature(&self) -> String {
        self.items.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }
}
