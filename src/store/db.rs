//! One SQL connection, SQLite or PostgreSQL, behind the few calls the store makes.
//!
//! The store's SQL is written once, in the dialect both engines share, with `?N` parameters;
//! [`Db`] turns it into what the engine at hand reads: for PostgreSQL `$N` parameters, `ILIKE`
//! for SQLite's case-blind `LIKE`, `strpos` for `instr`; for SQLite `max`/`min` for
//! `GREATEST`/`LEAST`. Values cross as [`Value`]s, so the same parameters and the same row
//! reading serve both. Statements are prepared once and cached by their text.

use std::cell::{Cell as Flag, RefCell};
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use postgres_types::{IsNull, ToSql, Type, to_sql_checked};

use crate::error::{Error, Result};

/// A parameter or column value, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// Something the store passes as an SQL parameter.
pub trait Param {
    fn value(&self) -> Value<'_>;
}

/// The parameters of one statement: `params![a, b]`.
#[macro_export]
#[doc(hidden)]
macro_rules! __store_params {
    () => { &[] as &[&dyn $crate::store::db::Param] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::db::Param),+] as &[&dyn $crate::store::db::Param] };
}
pub use crate::__store_params as params;

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn value(&self) -> Value<'_> {
                Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_param!(i64, i32, u32, u64, usize, u16, u8);

impl Param for bool {
    fn value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl Param for f64 {
    fn value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}

impl Param for str {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl Param for String {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl Param for [u8] {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl Param for Vec<u8> {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value<'_> {
        (**self).value()
    }
}

impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, Param::value)
    }
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(i),
            Value::Real(f) => ValueRef::Real(f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres_types::private::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                _ => i.to_sql(ty, out),
            },
            Value::Real(f) => f.to_sql(ty, out),
            Value::Text(s) => s.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A value the store reads from a column.
pub trait Cell: Sized {
    /// `None` for SQL NULL.
    fn from_value(v: Value<'_>) -> Result<Option<Self>>;
}

fn mismatch(want: &str, got: Value<'_>) -> Error {
    let got = match got {
        Value::Null => "NULL",
        Value::Int(_) => "an integer",
        Value::Real(_) => "a real",
        Value::Text(_) => "text",
        Value::Blob(_) => "a blob",
    };
    Error::Internal(format!("store: expected {want}, found {got}"))
}

macro_rules! int_cell {
    ($($t:ty),*) => {$(
        impl Cell for $t {
            fn from_value(v: Value<'_>) -> Result<Option<Self>> {
                match v {
                    Value::Null => Ok(None),
                    Value::Int(i) => <$t>::try_from(i).map(Some).map_err(|_| {
                        Error::Internal(format!("store: {i} is out of range for {}", stringify!($t)))
                    }),
                    other => Err(mismatch(stringify!($t), other)),
                }
            }
        }
    )*};
}
int_cell!(i64, i32, u32, u64, usize);

impl Cell for bool {
    fn from_value(v: Value<'_>) -> Result<Option<Self>> {
        Ok(i64::from_value(v)?.map(|i| i != 0))
    }
}

impl Cell for f64 {
    fn from_value(v: Value<'_>) -> Result<Option<Self>> {
        match v {
            Value::Null => Ok(None),
            Value::Real(f) => Ok(Some(f)),
            Value::Int(i) => Ok(Some(i as f64)),
            other => Err(mismatch("a real", other)),
        }
    }
}

impl Cell for String {
    fn from_value(v: Value<'_>) -> Result<Option<Self>> {
        match v {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.to_owned())),
            other => Err(mismatch("text", other)),
        }
    }
}

impl Cell for Vec<u8> {
    fn from_value(v: Value<'_>) -> Result<Option<Self>> {
        match v {
            Value::Null => Ok(None),
            Value::Blob(b) => Ok(Some(b.to_vec())),
            Value::Text(s) => Ok(Some(s.as_bytes().to_vec())),
            other => Err(mismatch("a blob", other)),
        }
    }
}

impl<T: Cell> Cell for Option<T> {
    fn from_value(v: Value<'_>) -> Result<Option<Self>> {
        Ok(Some(T::from_value(v)?))
    }
}

/// One row of a result, from either engine.
pub enum Row<'a> {
    Lite(&'a rusqlite::Row<'a>),
    Pg(&'a postgres::Row),
}

impl Row<'_> {
    /// Column `i` (from 0); NULL only where `T` is an `Option`.
    pub fn get<T: Cell>(&self, i: usize) -> Result<T> {
        let v = self.value(i)?;
        T::from_value(v)?.ok_or_else(|| {
            Error::Internal(format!(
                "store: column {i} is NULL where a value is expected"
            ))
        })
    }

    fn value(&self, i: usize) -> Result<Value<'_>> {
        match self {
            Row::Lite(r) => {
                use rusqlite::types::ValueRef;
                Ok(match r.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(i) => Value::Int(i),
                    ValueRef::Real(f) => Value::Real(f),
                    ValueRef::Text(t) => Value::Text(
                        std::str::from_utf8(t)
                            .map_err(|e| Error::Internal(format!("store: column {i}: {e}")))?,
                    ),
                    ValueRef::Blob(b) => Value::Blob(b),
                })
            }
            Row::Pg(r) => pg_value(r, i),
        }
    }
}

/// Column `i` of a PostgreSQL row as a [`Value`], by the column's type.
fn pg_value(r: &postgres::Row, i: usize) -> Result<Value<'_>> {
    let ty = r
        .columns()
        .get(i)
        .ok_or_else(|| Error::Internal(format!("store: no column {i}")))?
        .type_()
        .clone();
    let v = match ty {
        Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Value::Int),
        Type::INT4 => r
            .try_get::<_, Option<i32>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::INT2 => r
            .try_get::<_, Option<i16>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::BOOL => r
            .try_get::<_, Option<bool>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.map(Value::Real),
        Type::FLOAT4 => r
            .try_get::<_, Option<f32>>(i)?
            .map(|v| Value::Real(v.into())),
        Type::BYTEA => r.try_get::<_, Option<&[u8]>>(i)?.map(Value::Blob),
        _ => r.try_get::<_, Option<&str>>(i)?.map(Value::Text),
    };
    Ok(v.unwrap_or(Value::Null))
}

/// A PostgreSQL connection with its prepared statements.
pub struct Pg {
    client: RefCell<PgClient>,
    statements: RefCell<HashMap<String, postgres::Statement>>,
    in_tx: Flag<bool>,
    /// The leases checked in the open transaction (mailbox, worker, token): the check's
    /// `UPDATE` locks the lease row to the end of the transaction, so no other worker can
    /// take the mailbox over before it commits, and a group commit checks each mailbox once
    /// instead of once per message (one round trip of the 8-9 a message costs).
    fenced: RefCell<Vec<(String, String, i64)>>,
    /// The cursor advances a group commit holds back to its commit (see
    /// [`Db::hold_advances`]): (mailbox, folder, UIDVALIDITY) and the furthest UID. `None`
    /// outside a group.
    held: RefCell<Option<Vec<HeldAdvance>>>,
    /// The leases a message commit must hold (a shared store's workers); `None`: no check
    /// (a command that reads no mailbox: import, ingest, the CLI's edits).
    fence: Option<std::sync::Arc<dyn Fence>>,
    /// Makes a new connection when the server went away (a restart, a failover): the next
    /// statement outside a transaction runs on it.
    reconnect: Option<Box<dyn Fn() -> Result<postgres::Client> + Send>>,
}

/// A cursor advance held back to a group's commit: mailbox, folder, UIDVALIDITY and the UID
/// the cursor moves to.
pub type HeldAdvance = (String, String, u32, u32);

/// Which worker holds which mailbox, and under which fencing token: asked by every commit
/// that moves a mailbox's cursor on a shared store.
pub trait Fence: Send + Sync {
    /// The worker id and the token this process holds `mailbox` under; `None` when it
    /// holds no lease on it.
    fn holder(&self, mailbox: &str) -> Option<(String, i64)>;
}

/// The connection a [`super::Store`] works on.
pub enum Db {
    Lite(rusqlite::Connection),
    Pg(Box<Pg>),
}

impl Db {
    /// A PostgreSQL connection.
    pub fn pg(client: postgres::Client) -> Db {
        Db::Pg(Box::new(Pg {
            client: RefCell::new(PgClient(Some(client))),
            statements: RefCell::new(HashMap::new()),
            in_tx: Flag::new(false),
            fenced: RefCell::new(Vec::new()),
            held: RefCell::new(None),
            fence: None,
            reconnect: None,
        }))
    }

    /// A PostgreSQL connection made by `connect`, and made again by it whenever the server
    /// closed the last one: a transaction cut off fails, the next one runs on a new
    /// connection.
    pub fn pg_reconnecting(
        connect: impl Fn() -> Result<postgres::Client> + Send + 'static,
    ) -> Result<Db> {
        let mut db = Db::pg(connect()?);
        if let Db::Pg(pg) = &mut db {
            pg.reconnect = Some(Box::new(connect));
        }
        Ok(db)
    }

    /// Whether this is PostgreSQL.
    pub fn is_pg(&self) -> bool {
        matches!(self, Db::Pg(_))
    }

    /// What a `SELECT` that claims a row ends with: on PostgreSQL the row is locked and rows
    /// that other workers are claiming right now are passed over (`FOR UPDATE SKIP LOCKED`,
    /// `OF` the table alias given, for a join); SQLite has one writer, so nothing.
    pub fn skip_locked(&self, of: &str) -> String {
        match self {
            Db::Lite(_) => String::new(),
            Db::Pg(_) if of.is_empty() => " FOR UPDATE SKIP LOCKED".into(),
            Db::Pg(_) => format!(" FOR UPDATE OF {of} SKIP LOCKED"),
        }
    }

    /// Serialises, to the end of the transaction, every transaction that takes the same
    /// `key` (PostgreSQL, where many workers write at once; SQLite has one writer already).
    pub fn lock_key(&self, key: &str) -> Result<()> {
        if self.is_pg() {
            self.query_row(
                "SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtext(?1))) AS locked",
                params![key],
                |_| Ok(()),
            )?;
        }
        Ok(())
    }

    /// From now on every commit that moves a mailbox's cursor checks the lease `fence`
    /// names (PostgreSQL; SQLite's file lock keeps a second writer out already).
    pub fn set_fence(&mut self, fence: std::sync::Arc<dyn Fence>) {
        if let Db::Pg(pg) = self {
            pg.fence = Some(fence);
        }
    }

    /// Refuses (with [`Error::LeaseLost`]) to go on with a commit for `mailbox` unless this
    /// worker still holds its lease; a no-op without a fence.
    pub fn fenced(&self, mailbox: &str) -> Result<()> {
        let Db::Pg(pg) = self else {
            return Ok(());
        };
        let Some(fence) = &pg.fence else {
            return Ok(());
        };
        let lost = |why: &str| Error::LeaseLost {
            mailbox: mailbox.to_owned(),
            message: why.to_owned(),
        };
        let Some((worker, token)) = fence.holder(mailbox) else {
            return Err(lost("this worker does not hold its lease"));
        };
        let held = |f: &(String, String, i64)| f.0 == mailbox && f.1 == worker && f.2 == token;
        if pg.in_tx.get() && pg.fenced.borrow().iter().any(held) {
            return Ok(());
        }
        if self.execute(crate::lease::FENCE_SQL, params![mailbox, worker, token])? != 1 {
            return Err(lost("another worker took its lease over"));
        }
        if pg.in_tx.get() {
            pg.fenced
                .borrow_mut()
                .push((mailbox.to_owned(), worker, token));
        }
        Ok(())
    }

    /// From now to the end of the open transaction, each cursor advance is held
    /// ([`Db::hold_advance`]) and made once per cursor at the commit ([`Db::take_advances`]),
    /// on PostgreSQL: a round trip a message less in a group commit, which takes no savepoint
    /// that could undo one of them. SQLite, where a statement costs no round trip, moves each
    /// cursor as it goes.
    pub fn hold_advances(&self) {
        if let Db::Pg(pg) = self
            && pg.in_tx.get()
        {
            *pg.held.borrow_mut() = Some(Vec::new());
        }
    }

    /// Holds the advance of cursor (`mailbox`, `folder`, `uidvalidity`) to `to` when advances
    /// are held ([`Db::hold_advances`]); `false`: make it now.
    pub fn hold_advance(&self, mailbox: &str, folder: &str, uidvalidity: u32, to: u32) -> bool {
        let Db::Pg(pg) = self else {
            return false;
        };
        let mut held = pg.held.borrow_mut();
        let Some(held) = held.as_mut() else {
            return false;
        };
        let same = |h: &&mut HeldAdvance| h.0 == mailbox && h.1 == folder && h.2 == uidvalidity;
        match held.iter_mut().find(same) {
            Some(h) => h.3 = h.3.max(to),
            None => held.push((mailbox.to_owned(), folder.to_owned(), uidvalidity, to)),
        }
        true
    }

    /// The advances held since [`Db::hold_advances`], each cursor's furthest; advances are
    /// made as they come again.
    pub fn take_advances(&self) -> Vec<HeldAdvance> {
        match self {
            Db::Lite(_) => Vec::new(),
            Db::Pg(pg) => pg.held.borrow_mut().take().unwrap_or_default(),
        }
    }

    /// The SQLite connection; `None` on PostgreSQL.
    pub fn lite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Db::Lite(c) => Some(c),
            Db::Pg(_) => None,
        }
    }

    /// Runs one statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<usize> {
        let values: Vec<Value<'_>> = params.iter().map(|p| p.value()).collect();
        match self {
            Db::Lite(c) => Ok(c
                .prepare_cached(&lite_sql(sql))?
                .execute(rusqlite::params_from_iter(values.iter()))?),
            Db::Pg(pg) => {
                let statement = pg.statement(sql)?;
                let params = pg_params(&values);
                let n = pg.run(|c| c.execute(&statement, &params))?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Runs one `INSERT` into a table with an `id INTEGER PRIMARY KEY` and returns the new
    /// row's id. SQLite reads it from the connection: an `INSERT … RETURNING` inside a
    /// transaction is run like a trigger, with a statement journal that copies every page the
    /// insert touches (16 KiB each) before it writes; PostgreSQL appends `RETURNING id`.
    pub fn insert_id(&self, sql: &str, params: &[&dyn Param]) -> Result<i64> {
        match self {
            Db::Lite(c) => {
                self.execute(sql, params)?;
                Ok(c.last_insert_rowid())
            }
            Db::Pg(_) => self.query_row(&format!("{sql} RETURNING id"), params, |r| r.get(0)),
        }
    }

    /// Every row of a query, each read by `f`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.each(sql, params, |r| {
            out.push(f(r)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The first row of a query, read by `f`; `None` when there is none.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut f = Some(f);
        let mut out = None;
        self.each(sql, params, |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(false)
        })?;
        Ok(out)
    }

    /// Runs a query and hands its rows to `f` while it returns `true`.
    fn each(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row<'_>) -> Result<bool>,
    ) -> Result<()> {
        let values: Vec<Value<'_>> = params.iter().map(|p| p.value()).collect();
        match self {
            Db::Lite(c) => {
                let mut s = c.prepare_cached(&lite_sql(sql))?;
                let mut rows = s.query(rusqlite::params_from_iter(values.iter()))?;
                while let Some(r) = rows.next()? {
                    if !f(&Row::Lite(r))? {
                        break;
                    }
                }
            }
            Db::Pg(pg) => {
                let statement = pg.statement(sql)?;
                let params = pg_params(&values);
                let rows = pg.run(|c| c.query(&statement, &params))?;
                for r in &rows {
                    if !f(&Row::Pg(r))? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// The first row of a query, read by `f`; an error when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.query_opt(sql, params, f)?.ok_or_else(|| match self {
            Db::Lite(_) => Error::from(rusqlite::Error::QueryReturnedNoRows),
            Db::Pg(_) => Error::Internal(format!("store: no row for {}", first_line(sql))),
        })
    }

    /// Runs statements without parameters, separated by `;`.
    pub fn batch(&self, sql: &str) -> Result<()> {
        match self {
            Db::Lite(c) => Ok(c.execute_batch(sql)?),
            Db::Pg(pg) => {
                pg.revive()?;
                Ok(pg.run(|c| c.batch_execute(sql))?)
            }
        }
    }

    /// Starts a write transaction (SQLite: taking the write lock at once).
    pub fn begin(&self) -> Result<()> {
        match self {
            Db::Lite(c) => Ok(c.execute_batch("BEGIN IMMEDIATE")?),
            Db::Pg(pg) => {
                pg.revive()?;
                pg.run(|c| c.batch_execute("BEGIN"))?;
                pg.in_tx.set(true);
                pg.fenced.borrow_mut().clear();
                pg.held.borrow_mut().take();
                Ok(())
            }
        }
    }

    /// Commits the transaction started by [`Db::begin`].
    pub fn commit(&self) -> Result<()> {
        self.end("COMMIT")
    }

    /// Rolls the transaction back, when one is open.
    pub fn rollback(&self) -> Result<()> {
        if self.in_transaction() {
            self.end("ROLLBACK")?;
        }
        Ok(())
    }

    fn end(&self, sql: &str) -> Result<()> {
        match self {
            Db::Lite(c) => Ok(c.execute_batch(sql)?),
            Db::Pg(pg) => {
                let r = pg.run(|c| c.batch_execute(sql));
                pg.in_tx.set(false);
                pg.fenced.borrow_mut().clear();
                pg.held.borrow_mut().take();
                Ok(r?)
            }
        }
    }

    /// Whether a transaction is open (SQLite may have rolled one back by itself).
    pub fn in_transaction(&self) -> bool {
        match self {
            Db::Lite(c) => !c.is_autocommit(),
            Db::Pg(pg) => {
                if pg.client.borrow().is_closed() {
                    pg.in_tx.set(false);
                }
                pg.in_tx.get()
            }
        }
    }

    /// Runs `f` inside a savepoint of the open transaction: kept when it returns `Ok`,
    /// undone (and the transaction still usable) when it fails or panics.
    pub fn savepoint<T>(&self, f: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
        self.batch("SAVEPOINT w")?;
        let undo = || {
            if self.in_transaction() {
                let _ = self.batch("ROLLBACK TO w; RELEASE w");
            }
            // A lease row locked after the savepoint is unlocked again.
            if let Db::Pg(pg) = self {
                pg.fenced.borrow_mut().clear();
            }
        };
        match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(Ok(out)) => {
                self.batch("RELEASE w")?;
                Ok(out)
            }
            Ok(Err(e)) => {
                undo();
                Err(e)
            }
            Err(panic) => {
                undo();
                resume_unwind(panic)
            }
        }
    }
}

impl Pg {
    /// The prepared statement for `sql` (in the store's dialect), prepared on first use.
    fn statement(&self, sql: &str) -> Result<postgres::Statement> {
        self.revive()?;
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let text = pg_sql(sql);
        let s = self.run(|c| c.prepare(&text))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

/// The sync `postgres` client runs its own Tokio runtime and panics when called, or
/// dropped, on a thread that is driving another runtime. The store is used from plain
/// threads (the store thread, the CLI); the few callers inside a runtime (`doctor`, the
/// OAuth2 token table) get their calls run on a scoped thread of their own.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// A client that is closed off any runtime when dropped (see [`off_runtime`]).
struct PgClient(Option<postgres::Client>);

impl PgClient {
    fn get(&mut self) -> &mut postgres::Client {
        self.0
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only by drop"))
    }

    fn is_closed(&self) -> bool {
        self.0.as_ref().is_none_or(postgres::Client::is_closed)
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            off_runtime(move || drop(client));
        }
    }
}

impl Pg {
    /// Runs `f` on the client, off any runtime.
    fn run<T: Send>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> std::result::Result<T, postgres::Error> + Send,
    ) -> std::result::Result<T, postgres::Error> {
        let mut client = self.client.borrow_mut();
        let client = client.get();
        off_runtime(move || f(client))
    }

    /// A new connection in place of one the server closed, outside a transaction (inside
    /// one, the transaction is lost and its caller must fail).
    fn revive(&self) -> Result<()> {
        if self.in_tx.get() || !self.client.borrow().is_closed() {
            return Ok(());
        }
        let Some(connect) = &self.reconnect else {
            return Ok(());
        };
        let client = connect()?;
        tracing::info!("reconnected to PostgreSQL");
        *self.client.borrow_mut() = PgClient(Some(client));
        self.statements.borrow_mut().clear();
        Ok(())
    }
}

fn pg_params<'a>(values: &'a [Value<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or("")
}

/// The store's SQL as SQLite reads it.
fn lite_sql(sql: &str) -> std::borrow::Cow<'_, str> {
    if sql.contains("GREATEST(") || sql.contains("LEAST(") {
        sql.replace("GREATEST(", "max(")
            .replace("LEAST(", "min(")
            .into()
    } else {
        sql.into()
    }
}

/// The store's SQL as PostgreSQL reads it: `?N` becomes `$N` (outside quoted text), `LIKE`
/// `ILIKE` (SQLite's `LIKE` ignores ASCII case), `instr(` `strpos(`.
pub(crate) fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quoted = false;
    let mut bare = 0;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                out.push('$');
                if !chars.peek().is_some_and(char::is_ascii_digit) {
                    bare += 1;
                    out.push_str(&bare.to_string());
                }
            }
            _ => out.push(c),
        }
    }
    out.replace(" LIKE ", " ILIKE ")
        .replace("instr(", "strpos(")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_dialect_becomes_each_engines_own() {
        assert_eq!(
            pg_sql("SELECT a FROM t WHERE b = ?1 AND c LIKE ?2 AND d = '?3' AND instr(e, ?3)"),
            "SELECT a FROM t WHERE b = $1 AND c ILIKE $2 AND d = '?3' AND strpos(e, $3)"
        );
        assert_eq!(
            lite_sql("UPDATE t SET a = GREATEST(a, ?1), b = LEAST(b, 2)"),
            "UPDATE t SET a = max(a, ?1), b = min(b, 2)"
        );
    }

    #[test]
    fn values_round_trip_through_sqlite() {
        let db = Db::Lite(rusqlite::Connection::open_in_memory().unwrap());
        db.batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB, n TEXT)")
            .unwrap();
        let none: Option<&str> = None;
        db.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            params![7u32, "x", b"raw".as_slice(), none],
        )
        .unwrap();
        let (i, s, b, n): (u32, String, Vec<u8>, Option<String>) = db
            .query_row("SELECT i, s, b, n FROM t", params![], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap();
        assert_eq!(
            (i, s.as_str(), b.as_slice(), n),
            (7, "x", &b"raw"[..], None)
        );
        assert!(
            db.query_opt("SELECT i FROM t WHERE i = 8", params![], |r| r
                .get::<i64>(0))
                .unwrap()
                .is_none()
        );
        assert!(
            db.query_row("SELECT s FROM t", params![], |r| r.get::<i64>(0))
                .is_err()
        );
    }
}
