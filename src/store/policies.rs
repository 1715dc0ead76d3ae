//! Policies managed through the admin API: the current version per project and every version
//! ever written. Read by a poller (never per request) and applied within a second.

use sqlx::Row;

use super::{Db, Store, StoreError, err};

/// One version of a project's policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyVersion {
    pub project: String,
    pub version: i64,
    pub active: bool,
    /// JSON, same shape as `projects[].policy` in the YAML.
    pub document: String,
    /// Unix seconds.
    pub changed_at: i64,
}

/// Why a policy write was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyWriteError {
    #[error("project {0} already has an active policy (use PUT to change it)")]
    Exists(String),
    #[error("project {0} has no active policy")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn version_of<R: Row>(row: &R) -> Result<PolicyVersion, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(PolicyVersion {
        project: row.try_get("project").map_err(|e| err("project", e))?,
        version: row.try_get("version").map_err(|e| err("version", e))?,
        active: row.try_get("active").map_err(|e| err("active", e))?,
        document: row.try_get("document").map_err(|e| err("document", e))?,
        changed_at: row
            .try_get("changed_at")
            .map_err(|e| err("changed_at", e))?,
    })
}

impl Store {
    /// A number that changes whenever any policy changes (the poller's cheap check).
    pub async fn policy_revision(&self) -> Result<i64, StoreError> {
        with_pool!(&self.db, p => {
            let row = sqlx::query("SELECT CAST(COALESCE(SUM(version), 0) AS BIGINT) AS r FROM policies")
                .fetch_one(p)
                .await
                .map_err(|e| err("policies", e))?;
            row.try_get::<i64, _>("r").map_err(|e| err("policies", e))
        })
    }

    /// The current version of every project that has one (active or not).
    pub async fn current_policies(&self) -> Result<Vec<PolicyVersion>, StoreError> {
        with_pool!(&self.db, p => {
            sqlx::query("SELECT project, version, active, document, updated_at AS changed_at FROM policies ORDER BY project")
                .fetch_all(p)
                .await
                .map_err(|e| err("policies", e))?
                .iter()
                .map(version_of)
                .collect()
        })
    }

    /// Every version of `project`'s policy, newest first.
    pub async fn policy_history(&self, project: &str) -> Result<Vec<PolicyVersion>, StoreError> {
        with_pool!(&self.db, p => {
            sqlx::query("SELECT project, version, active, document, changed_at FROM policy_versions WHERE project = $1 ORDER BY version DESC")
                .bind(project)
                .fetch_all(p)
                .await
                .map_err(|e| err("policy_versions", e))?
                .iter()
                .map(version_of)
                .collect()
        })
    }

    /// Writes a new version of `project`'s policy. With `create`, refuses if an active one
    /// exists. Returns the new version number.
    pub async fn put_policy(
        &self,
        project: &str,
        document: &str,
        create: bool,
    ) -> Result<i64, PolicyWriteError> {
        self.write_policy(project, Some(document), create).await
    }

    /// Deactivates `project`'s policy (a new version with `active = false`; the YAML policy,
    /// if any, applies again).
    pub async fn deactivate_policy(&self, project: &str) -> Result<i64, PolicyWriteError> {
        self.write_policy(project, None, false).await
    }

    async fn write_policy(
        &self,
        project: &str,
        document: Option<&str>,
        create: bool,
    ) -> Result<i64, PolicyWriteError> {
        let at = crate::clock::unix_now() as i64;
        with_pool!(&self.db, p => {
            // SQLite: take the write lock up front (`BEGIN IMMEDIATE`): a transaction that read
            // first could not upgrade to a write after another connection wrote (SQLITE_BUSY,
            // not waited for). PostgreSQL: lock the row.
            let postgres = self.kind() == "postgres";
            let begin = if postgres { "BEGIN" } else { "BEGIN IMMEDIATE" };
            let mut tx = p.begin_with(begin).await.map_err(|e| err("policies", e))?;
            let lock = if postgres { " FOR UPDATE" } else { "" };
            let current = sqlx::query(&format!("SELECT version, active, document FROM policies WHERE project = $1{lock}"))
                .bind(project)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| err("policies", e))?;
            let (version, active, previous) = match &current {
                Some(row) => (
                    row.try_get::<i64, _>("version").map_err(|e| err("policies", e))?,
                    row.try_get::<bool, _>("active").map_err(|e| err("policies", e))?,
                    row.try_get::<String, _>("document").map_err(|e| err("policies", e))?,
                ),
                None => (0, false, String::new()),
            };
            if create && active {
                return Err(PolicyWriteError::Exists(project.to_string()));
            }
            let (new_active, new_document) = match document {
                Some(d) => (true, d.to_string()),
                None if active => (false, previous),
                None => return Err(PolicyWriteError::NotFound(project.to_string())),
            };
            let new_version = version + 1;
            sqlx::query(
                "INSERT INTO policies (project, version, active, document, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (project) DO UPDATE SET version = excluded.version, active = excluded.active,
                 document = excluded.document, updated_at = excluded.updated_at",
            )
            .bind(project).bind(new_version).bind(new_active).bind(&new_document).bind(at)
            .execute(&mut *tx)
            .await
            .map_err(|e| err("policies", e))?;
            sqlx::query("INSERT INTO policy_versions (project, version, active, document, changed_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(project).bind(new_version).bind(new_active).bind(&new_document).bind(at)
                .execute(&mut *tx)
                .await
                .map_err(|e| err("policy_versions", e))?;
            tx.commit().await.map_err(|e| err("policies", e))?;
            Ok(new_version)
        })
    }
}
