//! Local users' profiles (§"Profiles").

use myelin_storage::Batch;

use super::{PROFILES, Profile, UserError, Users};

impl Users {
    /// A local user's profile (`None` for unknown users).
    pub fn profile(&self, user_id: &str) -> Result<Option<Profile>, UserError> {
        Ok(PROFILES.get(&*self.db, &user_id.to_owned())?)
    }

    /// Replaces a local user's profile.
    pub async fn set_profile(&self, user_id: &str, profile: &Profile) -> Result<(), UserError> {
        let mut batch = Batch::new();
        PROFILES.put(&mut batch, &user_id.to_owned(), profile)?;
        self.db.commit(batch).await?;
        Ok(())
    }
}
