//! Products: the unit a device belongs to (`product_key`) and firmware is uploaded for.

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{Page, ProductView};

use crate::Domain;
use crate::access::{Authorized, Read, Write};
use crate::clock::from_ms;
use crate::db::{DbConn, last_insert_id};
use crate::error::{DomainError, Result};
use crate::paging::PageRequest;
use crate::schema::{devices, firmware, products};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = products)]
pub struct ProductRecord {
    pub id: i64,
    pub tenant_id: i64,
    pub product_key: String,
    pub product_secret: String,
    pub name: String,
    pub created_at: i64,
}

impl ProductRecord {
    pub fn view(&self) -> ProductView {
        ProductView {
            product_key: self.product_key.clone(),
            product_secret: self.product_secret.clone(),
            name: self.name.clone(),
            created_at: from_ms(self.created_at),
        }
    }
}

/// 32 lowercase hex characters, as the hosted console issues them.
pub fn is_key32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn random_key32() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn validate_product_name(name: &str) -> Result<String> {
    crate::validate::label("name", name, 128)
        .map_err(|_| DomainError::invalid("name", "product name must be 1–128 characters, not only spaces"))
}

/// Loads a product of the principal's tenant; another tenant's product is "not found".
pub(crate) fn find_product(c: &mut DbConn, tenant_id: i64, product_key: &str) -> Result<ProductRecord> {
    products::table
        .filter(products::tenant_id.eq(tenant_id).and(products::product_key.eq(product_key)))
        .select(ProductRecord::as_select())
        .first(c)
        .optional()?
        .ok_or_else(product_not_found)
}

pub(crate) fn product_not_found() -> DomainError {
    DomainError::new(ErrorCode::ProductNotFound, "no such product in this tenant")
}

impl Domain {
    pub async fn create_product(
        &self,
        who: &Authorized<Write>,
        name: &str,
        product_key: Option<&str>,
        product_secret: Option<&str>,
    ) -> Result<ProductView> {
        let name = validate_product_name(name)?;
        let key = match product_key {
            Some(k) if is_key32(k) => k.to_owned(),
            Some(_) => {
                return Err(DomainError::invalid("product_key", "product_key must be 32 lowercase hex characters"));
            }
            None => random_key32(),
        };
        let secret = match product_secret {
            Some(s) if is_key32(s) => s.to_owned(),
            Some(_) => {
                return Err(DomainError::invalid(
                    "product_secret",
                    "product_secret must be 32 lowercase hex characters",
                ));
            }
            None => random_key32(),
        };
        let now = self.clock.now_ms();
        let tenant_id = who.tenant_id();
        let record: ProductRecord = self
            .db
            .write(move |c| {
                diesel::insert_into(products::table)
                    .values((
                        products::tenant_id.eq(tenant_id),
                        products::product_key.eq(&key),
                        products::product_secret.eq(secret),
                        products::name.eq(name),
                        products::created_at.eq(now),
                    ))
                    .execute(c)
                    .map_err(|e| match DomainError::from(e) {
                        DomainError::UniqueViolation => DomainError::field(
                            ErrorCode::ProductKeyTaken,
                            "product_key",
                            format!("product_key {key} is already registered"),
                        ),
                        other => other,
                    })?;
                let id = last_insert_id(c)?;
                Ok(products::table.find(id).select(ProductRecord::as_select()).first(c)?)
            })
            .await?;
        Ok(record.view())
    }

    pub async fn list_products(&self, who: &Authorized<Read>, page: PageRequest) -> Result<Page<ProductView>> {
        let tenant_id = who.tenant_id();
        let (rows, total) = self
            .db
            .snapshot(move |c| {
                let total = products::table.filter(products::tenant_id.eq(tenant_id)).count().get_result::<i64>(c)?;
                let rows: Vec<ProductRecord> = products::table
                    .filter(products::tenant_id.eq(tenant_id))
                    .order(products::id.desc())
                    .limit(page.limit())
                    .offset(page.offset())
                    .select(ProductRecord::as_select())
                    .load(c)?;
                Ok((rows, total))
            })
            .await?;
        Ok(page.wrap(rows.iter().map(ProductRecord::view).collect(), total))
    }

    pub async fn get_product(&self, who: &Authorized<Read>, product_key: &str) -> Result<ProductView> {
        let (tenant_id, key) = (who.tenant_id(), product_key.to_owned());
        Ok(self.db.run(move |c| find_product(c, tenant_id, &key)).await?.view())
    }

    pub async fn update_product(
        &self,
        who: &Authorized<Write>,
        product_key: &str,
        name: Option<&str>,
    ) -> Result<ProductView> {
        let name = name.map(validate_product_name).transpose()?;
        let (tenant_id, key) = (who.tenant_id(), product_key.to_owned());
        let record = self
            .db
            .write(move |c| {
                let product = find_product(c, tenant_id, &key)?;
                if let Some(name) = name {
                    diesel::update(products::table.find(product.id)).set(products::name.eq(name)).execute(c)?;
                }
                Ok(products::table.find(product.id).select(ProductRecord::as_select()).first(c)?)
            })
            .await?;
        Ok(record.view())
    }

    /// Deletes an empty product; one that still has firmware is refused.
    pub async fn delete_product(&self, who: &Authorized<Write>, product_key: &str) -> Result<()> {
        let (tenant_id, key) = (who.tenant_id(), product_key.to_owned());
        self.db
            .write(move |c| {
                let product = find_product(c, tenant_id, &key)?;
                let firmware_count: i64 =
                    firmware::table.filter(firmware::product_id.eq(product.id)).count().get_result(c)?;
                let device_count: i64 =
                    devices::table.filter(devices::product_id.eq(product.id)).count().get_result(c)?;
                if firmware_count > 0 || device_count > 0 {
                    return Err(DomainError::new(
                        ErrorCode::ProductNotEmpty,
                        format!(
                            "the product still has {firmware_count} firmware and {device_count} devices; delete them first"
                        ),
                    ));
                }
                diesel::delete(products::table.find(product.id)).execute(c)?;
                Ok(())
            })
            .await
    }
}
