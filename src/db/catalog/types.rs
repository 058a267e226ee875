//! Types: what the catalog says a column's type can do (sort, compare, test equality) and how its values are
//! encoded.

use std::collections::HashMap;

use tokio_postgres::Client;
use tokio_postgres::types::{Kind, Type};

use crate::dataset::{Aggregates, Columnar, Operators, Scalar, ValueKind, ValueType};

/// What the catalog says of the base types a dataset's columns are built from: their default operator
/// classes and comparison operators (binary-coercible types count, as `varchar` uses `text`'s).
pub(super) struct BaseTypes(HashMap<u32, BaseType>);

#[derive(Clone, Copy, Default)]
struct BaseType {
    /// A default btree operator class: sortable, and comparable inside arrays and composites.
    btree: bool,
    /// A default hash operator class: its equality works inside arrays and composites.
    hash: bool,
    /// The comparison operators the parser finds for the type itself.
    operators: Operators,
}

impl BaseTypes {
    /// What the catalog says of `oids` (base types: see [`base_oids`]).
    pub(super) async fn load(client: &Client, oids: &[u32]) -> Result<BaseTypes, tokio_postgres::Error> {
        let rows = client
            .query(
                "WITH ty AS (SELECT t.oid, ARRAY(SELECT t.oid UNION SELECT k.casttarget FROM pg_catalog.pg_cast k \
                   WHERE k.castsource = t.oid AND k.castmethod = 'b' AND k.castcontext = 'i') AS alike \
                   FROM pg_catalog.pg_type t WHERE t.oid = ANY($1)) \
                 SELECT ty.oid, \
                   EXISTS (SELECT 1 FROM pg_catalog.pg_opclass c JOIN pg_catalog.pg_am a ON a.oid = c.opcmethod \
                     WHERE a.amname = 'btree' AND c.opcdefault AND c.opcintype = ANY(ty.alike)), \
                   EXISTS (SELECT 1 FROM pg_catalog.pg_opclass c JOIN pg_catalog.pg_am a ON a.oid = c.opcmethod \
                     WHERE a.amname = 'hash' AND c.opcdefault AND c.opcintype = ANY(ty.alike)), \
                   ARRAY(SELECT DISTINCT o.oprname::text FROM pg_catalog.pg_operator o \
                     WHERE o.oprname IN ('=', '<>', '<', '<=', '>', '>=') AND o.oprleft = o.oprright \
                     AND o.oprleft = ANY(ty.alike) AND o.oprresult = 'pg_catalog.bool'::pg_catalog.regtype) \
                 FROM ty",
                &[&oids],
            )
            .await?;
        Ok(BaseTypes(
            rows.iter()
                .map(|row| {
                    let names: Vec<String> = row.get(3);
                    let has = |wanted: &[&str]| wanted.iter().all(|w| names.iter().any(|n| n == w));
                    let btree: bool = row.get(1);
                    let base = BaseType {
                        btree,
                        hash: row.get(2),
                        operators: Operators {
                            equal: has(&["="]),
                            unequal: has(&["<>"]),
                            ordering: has(&["<", "<=", ">", ">="]),
                            sortable: btree,
                        },
                    };
                    (row.get::<_, u32>(0), base)
                })
                .collect(),
        ))
    }

    fn get(&self, ty: &Type) -> BaseType {
        self.0.get(&ty.oid()).copied().unwrap_or_default()
    }

    /// What a column of type `ty` supports. Arrays and composites resolve to generic operators that look up
    /// their elements' comparison functions only when they run, so those are checked here too.
    pub(super) fn operators(&self, ty: &Type) -> Operators {
        match ty.kind() {
            Kind::Domain(base) => self.operators(base),
            Kind::Enum(_) | Kind::Range(_) | Kind::Multirange(_) => Operators::ALL,
            Kind::Array(_) | Kind::Composite(_) => {
                let comparable = self.runtime(ty, true);
                let equal = self.runtime(ty, false);
                Operators {
                    equal,
                    unequal: equal,
                    ordering: comparable,
                    sortable: comparable,
                }
            }
            _ => self.get(ty).operators,
        }
    }

    /// Whether `ty`'s values can be compared (`ordered`) or tested for equality inside an array or record.
    fn runtime(&self, ty: &Type, ordered: bool) -> bool {
        match ty.kind() {
            Kind::Domain(inner) | Kind::Array(inner) => self.runtime(inner, ordered),
            Kind::Composite(fields) => fields.iter().all(|f| self.runtime(f.type_(), ordered)),
            Kind::Enum(_) | Kind::Range(_) | Kind::Multirange(_) => true,
            _ => {
                let base = self.get(ty);
                base.btree || (!ordered && base.hash)
            }
        }
    }
}

/// The base types `types` are built from (through domains, arrays and composites).
pub(super) fn base_oids(types: &[&Type]) -> Vec<u32> {
    let mut oids = Vec::new();
    for ty in types {
        collect_base_oids(ty, &mut oids);
    }
    oids
}

fn collect_base_oids(ty: &Type, oids: &mut Vec<u32>) {
    match ty.kind() {
        Kind::Domain(inner) | Kind::Array(inner) => collect_base_oids(inner, oids),
        Kind::Composite(fields) => fields.iter().for_each(|f| collect_base_oids(f.type_(), oids)),
        _ => oids.push(ty.oid()),
    }
}

/// A type an aggregate returns, as the catalog names it.
#[derive(Clone)]
pub(super) struct Returned {
    oid: u32,
    /// `format_type(oid, NULL)`.
    type_name: String,
    /// Its output function as quoted SQL.
    output_function: String,
}

/// The `pg_catalog` aggregates (`sum`, `avg`, `min`, `max`) that take each base type, found as Postgres's
/// parser finds them: a function of the type itself, else of a type it converts to without a cast function
/// (`varchar` uses `text`'s). Polymorphic ones (`min(anyenum)`, `min(anyarray)`) are [`BaseTypes::aggregates`]'.
#[derive(Default)]
pub(super) struct AggregateFunctions(HashMap<(u32, String), Returned>);

impl AggregateFunctions {
    pub(super) async fn load(client: &Client, oids: &[u32]) -> Result<AggregateFunctions, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT t.oid, p.proname::text, p.prorettype, pg_catalog.format_type(p.prorettype, NULL), \
                   pg_catalog.quote_ident(on_.nspname) || '.' || pg_catalog.quote_ident(o.proname) \
                 FROM pg_catalog.pg_type t \
                 JOIN pg_catalog.pg_proc p ON p.prokind = 'a' AND p.pronargs = 1 \
                   AND p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace \
                   AND p.proname IN ('sum', 'avg', 'min', 'max') \
                   AND (p.proargtypes[0] = t.oid OR EXISTS (SELECT 1 FROM pg_catalog.pg_cast k \
                     WHERE k.castsource = t.oid AND k.casttarget = p.proargtypes[0] \
                       AND k.castmethod = 'b' AND k.castcontext = 'i')) \
                 JOIN pg_catalog.pg_type r ON r.oid = p.prorettype \
                 JOIN pg_catalog.pg_proc o ON o.oid = r.typoutput \
                 JOIN pg_catalog.pg_namespace on_ ON on_.oid = o.pronamespace \
                 WHERE t.oid = ANY($1) \
                 ORDER BY (p.proargtypes[0] = t.oid) DESC",
                &[&oids],
            )
            .await?;
        let mut functions = HashMap::new();
        for row in rows {
            let returned = Returned {
                oid: row.get(2),
                type_name: row.get(3),
                output_function: row.get(4),
            };
            // An exact match comes first and wins, as in Postgres.
            functions.entry((row.get::<_, u32>(0), row.get(1))).or_insert(returned);
        }
        Ok(AggregateFunctions(functions))
    }

    fn get(&self, oid: u32, function: &str) -> Option<&Returned> {
        self.0.get(&(oid, function.to_owned()))
    }

    /// The types the aggregates return.
    pub(super) fn returned_oids(&self) -> Vec<u32> {
        self.0.values().map(|r| r.oid).collect()
    }
}

impl BaseTypes {
    /// What a column of type `ty` (`type_name` as `format_type` prints it) can be summarised with. `sum` of
    /// a `numeric(p,s)` is a `decimal128(38,s)` in columnar formats: its values keep the scale.
    pub(super) fn aggregates(
        &self,
        ty: &Type,
        type_name: &str,
        functions: &AggregateFunctions,
        utc: bool,
    ) -> Aggregates {
        match ty.kind() {
            Kind::Domain(base) => return self.aggregates(base, "", functions, utc),
            Kind::Enum(_) => {
                return Aggregates {
                    min_max: true,
                    ..Aggregates::default()
                };
            }
            Kind::Array(_) => {
                return Aggregates {
                    min_max: self.operators(ty).sortable,
                    ..Aggregates::default()
                };
            }
            Kind::Pseudo | Kind::Range(_) | Kind::Multirange(_) | Kind::Composite(_) => return Aggregates::default(),
            _ => {}
        }
        let value_type = |returned: &Returned| {
            let returned_type = Type::from_oid(returned.oid);
            let mut columnar = returned_type
                .as_ref()
                .map_or(Columnar::TEXT, |t| columnar(t, &returned.type_name));
            if *ty == Type::NUMERIC
                && returned.oid == Type::NUMERIC.oid()
                && let Some(Scalar::Decimal { scale, .. }) = decimal(type_name)
            {
                columnar.scalar = Scalar::Decimal { precision: 38, scale };
            }
            ValueType {
                type_name: returned.type_name.clone(),
                cast_type: returned.type_name.clone(),
                kind: returned_type
                    .as_ref()
                    .map_or(ValueKind::ServerFormatted, |t| value_kind(t, utc)),
                columnar,
                output_function: returned.output_function.clone(),
                operators: self.0.get(&returned.oid).copied().unwrap_or_default().operators,
            }
        };
        let oid = ty.oid();
        Aggregates {
            sum: functions.get(oid, "sum").map(value_type),
            avg: functions.get(oid, "avg").map(value_type),
            min_max: functions.get(oid, "min").is_some() && functions.get(oid, "max").is_some(),
        }
    }
}

/// The labels of an enum type (or of a domain over one).
pub(super) fn enum_labels(ty: &Type) -> Option<Vec<String>> {
    match ty.kind() {
        Kind::Enum(labels) => Some(labels.clone()),
        Kind::Domain(base) => enum_labels(base),
        _ => None,
    }
}

/// Which values pgspout decodes itself; everything else Postgres formats in the query.
pub(super) fn value_kind(ty: &Type, utc: bool) -> ValueKind {
    match ty.kind() {
        Kind::Domain(base) => return value_kind(base, utc),
        Kind::Enum(_) => return ValueKind::Text,
        _ => {}
    }
    match *ty {
        Type::BOOL => ValueKind::Bool,
        Type::INT2 | Type::INT4 | Type::INT8 => ValueKind::Int,
        Type::NUMERIC => ValueKind::Numeric,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => ValueKind::Text,
        Type::UUID => ValueKind::Uuid,
        Type::DATE => ValueKind::Date,
        Type::TIMESTAMP => ValueKind::Timestamp,
        Type::TIMESTAMPTZ if utc => ValueKind::TimestampUtc,
        Type::JSON => ValueKind::Json,
        Type::JSONB => ValueKind::Jsonb,
        Type::BYTEA => ValueKind::Bytea,
        _ => ValueKind::ServerFormatted,
    }
}

/// What a column of type `ty` (`type_name` as `format_type` prints it, typmod included) becomes in a columnar
/// format: a decoded type, a one-dimensional list of one, or else Postgres's text.
pub(super) fn columnar(ty: &Type, type_name: &str) -> Columnar {
    let element = match ty.kind() {
        Kind::Domain(base) => return columnar(base, ""),
        Kind::Array(element) => Some(element),
        _ => None,
    };
    match element {
        None => Columnar {
            scalar: scalar(ty, type_name),
            list: false,
        },
        Some(element) => match scalar(element, type_name.strip_suffix("[]").unwrap_or("")) {
            Scalar::Text => Columnar::TEXT,
            scalar => Columnar { scalar, list: true },
        },
    }
}

fn scalar(ty: &Type, type_name: &str) -> Scalar {
    match ty.kind() {
        Kind::Domain(base) => return scalar(base, ""),
        Kind::Enum(_) => return Scalar::Utf8,
        _ => {}
    }
    match *ty {
        Type::BOOL => Scalar::Bool,
        Type::INT2 => Scalar::Int16,
        Type::INT4 => Scalar::Int32,
        Type::INT8 => Scalar::Int64,
        Type::FLOAT4 => Scalar::Float32,
        Type::FLOAT8 => Scalar::Float64,
        Type::NUMERIC => decimal(type_name).unwrap_or(Scalar::Text),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => Scalar::Utf8,
        Type::BYTEA => Scalar::Binary,
        Type::UUID => Scalar::Uuid,
        Type::DATE => Scalar::Date,
        Type::TIME => Scalar::Time,
        Type::TIMESTAMP => Scalar::Timestamp,
        Type::TIMESTAMPTZ => Scalar::TimestampUtc,
        Type::INTERVAL => Scalar::Interval,
        Type::JSON => Scalar::Json,
        Type::JSONB => Scalar::Jsonb,
        _ => Scalar::Text,
    }
}

/// `numeric(p,s)` with p ≤ 38 and s ≤ p as a `decimal128` (Postgres 15 also allows s > p, which `decimal128`
/// refuses); an unconstrained `numeric` (or a domain over one, whose typmod the column does not show) has no
/// fixed scale.
fn decimal(type_name: &str) -> Option<Scalar> {
    let (precision, scale) = type_name
        .strip_prefix("numeric(")?
        .strip_suffix(')')?
        .split_once(',')
        .or_else(|| type_name.strip_prefix("numeric(")?.strip_suffix(')').map(|p| (p, "0")))?;
    let precision: u8 = precision.trim().parse().ok()?;
    let scale: i8 = scale.trim().parse().ok()?;
    ((1..=38).contains(&precision) && i16::from(scale) <= i16::from(precision))
        .then_some(Scalar::Decimal { precision, scale })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_typmods_become_decimals_up_to_38_digits() {
        assert_eq!(
            decimal("numeric(12,2)"),
            Some(Scalar::Decimal {
                precision: 12,
                scale: 2
            })
        );
        assert_eq!(decimal("numeric(5)"), Some(Scalar::Decimal { precision: 5, scale: 0 }));
        assert_eq!(
            decimal("numeric(5,-2)"),
            Some(Scalar::Decimal {
                precision: 5,
                scale: -2
            })
        );
        assert_eq!(decimal("numeric(39,2)"), None);
        assert_eq!(decimal("numeric(2,5)"), None, "a scale over the precision is text");
        assert_eq!(decimal("numeric(5,-1000)"), None);
        assert_eq!(decimal("numeric"), None);
    }

    #[test]
    fn arrays_of_decoded_types_are_lists_and_other_types_text() {
        assert_eq!(
            columnar(&Type::INT4_ARRAY, "integer[]"),
            Columnar {
                scalar: Scalar::Int32,
                list: true
            }
        );
        assert_eq!(
            columnar(&Type::NUMERIC_ARRAY, "numeric(10,2)[]"),
            Columnar {
                scalar: Scalar::Decimal {
                    precision: 10,
                    scale: 2
                },
                list: true
            }
        );
        assert_eq!(columnar(&Type::INET_ARRAY, "inet[]"), Columnar::TEXT);
        assert_eq!(columnar(&Type::NUMERIC, "numeric"), Columnar::TEXT);
        assert_eq!(columnar(&Type::TIMETZ, "time with time zone"), Columnar::TEXT);
    }
}
