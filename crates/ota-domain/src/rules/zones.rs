//! Time zones for windows in the devices' local time: per region of a tenant (as devices carry
//! regions), per device (an override), and per rule (the fallback). A rule's target gets its
//! zone when the rule takes it: the device's own, else the most specific region zone that
//! matches the device (every part the region names equals the device's), else the rule's,
//! else none (UTC).

use std::collections::HashMap;

use diesel::prelude::*;
use ota_wire::dto::Region;
use ota_wire::rollout::{DeviceTimeZone, RegionZone, RegionZoneView, SetRegionZones};

use crate::Domain;
use crate::access::{Authorized, Read, Write};
use crate::db::DbConn;
use crate::devices::DeviceRecord;
use crate::devices::import::parse_region;
use crate::error::{DomainError, Result};
use crate::schema::{device_settings, devices, region_zones};
use crate::window::parse_zone;

/// At most this many regions in one `PUT /region-zones`.
const MAX_ZONES: usize = 1000;

/// A region's parts, '' for a part it does not name.
type RegionKey = (String, String, String);

fn key_of(r: &Region) -> RegionKey {
    let p = |v: &Option<String>| v.clone().unwrap_or_default();
    (p(&r.country), p(&r.province), p(&r.city))
}

/// `country/province/city`, without trailing parts the key leaves open.
fn text_of(k: &RegionKey) -> String {
    let parts = [k.0.as_str(), k.1.as_str(), k.2.as_str()];
    let named = parts.iter().rposition(|p| !p.is_empty()).map_or(0, |i| i + 1);
    parts[..named].join("/")
}

/// Whether the region `k` (empty parts: any) takes in devices of region `device`.
fn covers(k: &RegionKey, device: &RegionKey) -> bool {
    (k.0.is_empty() || k.0 == device.0) && (k.1.is_empty() || k.1 == device.1) && (k.2.is_empty() || k.2 == device.2)
}

/// The zone of the most specific region among `zones` that takes in `device`.
fn most_specific<'a>(zones: &'a [(RegionKey, String)], device: &RegionKey) -> Option<&'a str> {
    let named = |k: &RegionKey| [&k.0, &k.1, &k.2].iter().filter(|p| !p.is_empty()).count();
    zones.iter().filter(|(k, _)| covers(k, device)).max_by_key(|(k, _)| named(k)).map(|(_, z)| z.as_str())
}

/// The tenant's region zones, to resolve many devices with.
pub(crate) struct ZoneBook {
    regions: Vec<(RegionKey, String)>,
    devices: HashMap<i64, String>,
    fallback: Option<String>,
}

impl ZoneBook {
    /// The region zones of `tenant_id` and the rule's own zone.
    pub(crate) fn load(c: &mut DbConn, tenant_id: i64, fallback: Option<String>) -> Result<ZoneBook> {
        let regions: Vec<(String, String, String, String)> = region_zones::table
            .filter(region_zones::tenant_id.eq(tenant_id))
            .select((region_zones::country, region_zones::province, region_zones::city, region_zones::time_zone))
            .load(c)?;
        let regions = regions.into_iter().map(|(a, b, c, z)| ((a, b, c), z)).collect();
        Ok(ZoneBook { regions, devices: HashMap::new(), fallback })
    }

    /// Reads the own zones of these devices (call per batch before [`ZoneBook::zone_of`]).
    pub(crate) fn read_overrides(&mut self, c: &mut DbConn, device_ids: &[i64]) -> Result<()> {
        self.devices.clear();
        for chunk in device_ids.chunks(1000) {
            let rows: Vec<(i64, Option<String>)> = device_settings::table
                .filter(device_settings::device_id.eq_any(chunk))
                .select((device_settings::device_id, device_settings::time_zone))
                .load(c)?;
            self.devices.extend(rows.into_iter().filter_map(|(id, z)| z.map(|z| (id, z))));
        }
        Ok(())
    }

    /// The zone a device's window runs in; `None`: UTC.
    pub(crate) fn zone_of(&self, d: &DeviceRecord) -> Option<String> {
        if let Some(z) = self.devices.get(&d.id) {
            return Some(z.clone());
        }
        let part = |v: &Option<String>| v.clone().unwrap_or_default();
        let device = (part(&d.country), part(&d.province), part(&d.city));
        most_specific(&self.regions, &device).map(str::to_owned).or_else(|| self.fallback.clone())
    }
}

impl ZoneBook {
    /// [`ZoneBook::zone_of`] as one SQL expression over a `devices` row (for taking a rule's
    /// targets in one statement): the device's own zone, else the most specific region zone
    /// that covers it, else the fallback. Every value is bound, none is spliced into the text.
    pub(crate) fn zone_sql(&self) -> ZoneSql {
        // The same winner as `most_specific`: most parts named; among equals the last one.
        let named = |k: &RegionKey| [&k.0, &k.1, &k.2].iter().filter(|p| !p.is_empty()).count();
        let mut order: Vec<usize> = (0..self.regions.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(named(&self.regions[i].0)), std::cmp::Reverse(i)));
        ZoneSql {
            regions: order.into_iter().map(|i| self.regions[i].clone()).collect(),
            fallback: self.fallback.clone(),
        }
    }
}

/// See [`ZoneBook::zone_sql`]: `COALESCE(<own zone>, CASE WHEN <region covers> THEN <zone> …
/// ELSE <fallback> END)`, regions most specific first.
#[derive(Debug, Clone)]
pub(crate) struct ZoneSql {
    regions: Vec<(RegionKey, String)>,
    fallback: Option<String>,
}

impl<GB> diesel::expression::ValidGrouping<GB> for ZoneSql {
    type IsAggregate = diesel::expression::is_aggregate::Never;
}

impl diesel::expression::Expression for ZoneSql {
    type SqlType = diesel::sql_types::Nullable<diesel::sql_types::Text>;
}

impl diesel::expression::AppearsOnTable<devices::table> for ZoneSql {}
impl diesel::expression::SelectableExpression<devices::table> for ZoneSql {}

impl diesel::query_builder::QueryId for ZoneSql {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<DB> diesel::query_builder::QueryFragment<DB> for ZoneSql
where
    DB: diesel::backend::Backend + diesel::sql_types::HasSqlType<diesel::sql_types::Text>,
    String: diesel::serialize::ToSql<diesel::sql_types::Text, DB>,
    Option<String>: diesel::serialize::ToSql<diesel::sql_types::Nullable<diesel::sql_types::Text>, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: diesel::query_builder::AstPass<'_, 'b, DB>) -> QueryResult<()> {
        use diesel::sql_types::{Nullable, Text};
        out.unsafe_to_cache_prepared();
        out.push_sql(
            "COALESCE((SELECT device_settings.time_zone FROM device_settings \
             WHERE device_settings.device_id = devices.id), ",
        );
        if self.regions.is_empty() {
            out.push_bind_param::<Nullable<Text>, _>(&self.fallback)?;
            out.push_sql(")");
            return Ok(());
        }
        out.push_sql("CASE");
        for ((country, province, city), zone) in &self.regions {
            out.push_sql(" WHEN 1 = 1");
            for (column, value) in
                [("devices.country", country), ("devices.province", province), ("devices.city", city)]
            {
                if !value.is_empty() {
                    out.push_sql(" AND ");
                    out.push_sql(column);
                    out.push_sql(" = ");
                    out.push_bind_param::<Text, _>(value)?;
                }
            }
            out.push_sql(" THEN ");
            out.push_bind_param::<Text, _>(zone)?;
        }
        out.push_sql(" ELSE ");
        out.push_bind_param::<Nullable<Text>, _>(&self.fallback)?;
        out.push_sql(" END)");
        Ok(())
    }
}

fn check_zone(field: &str, zone: &str) -> Result<()> {
    if parse_zone(zone).is_none() {
        return Err(DomainError::invalid(field, format!("`{zone}` is no IANA time zone (e.g. Asia/Shanghai)")));
    }
    Ok(())
}

impl Domain {
    /// Sets (or removes) the time zones of regions; answers every region of the tenant.
    pub async fn set_region_zones(&self, who: &Authorized<Write>, body: SetRegionZones) -> Result<Vec<RegionZoneView>> {
        if body.zones.is_empty() || body.zones.len() > MAX_ZONES {
            return Err(DomainError::invalid("zones", format!("give 1–{MAX_ZONES} regions")));
        }
        let mut rows: Vec<(RegionKey, Option<String>)> = Vec::new();
        for RegionZone { region, time_zone } in body.zones {
            let key = key_of(&parse_region(&region));
            if key == Default::default() {
                return Err(DomainError::invalid("zones", format!("`{region}` is no region")));
            }
            if let Some(z) = &time_zone {
                check_zone("zones", z)?;
            }
            rows.push((key, time_zone));
        }
        let (tenant_id, now) = (who.tenant_id(), self.clock.now_ms());
        self.db
            .write(move |c| {
                for ((country, province, city), zone) in &rows {
                    let this = region_zones::table
                        .filter(region_zones::tenant_id.eq(tenant_id))
                        .filter(region_zones::country.eq(country))
                        .filter(region_zones::province.eq(province))
                        .filter(region_zones::city.eq(city));
                    diesel::delete(this).execute(c)?;
                    if let Some(zone) = zone {
                        diesel::insert_into(region_zones::table)
                            .values((
                                region_zones::tenant_id.eq(tenant_id),
                                region_zones::country.eq(country),
                                region_zones::province.eq(province),
                                region_zones::city.eq(city),
                                region_zones::time_zone.eq(zone),
                                region_zones::updated_at.eq(now),
                            ))
                            .execute(c)?;
                    }
                }
                Ok(())
            })
            .await?;
        self.zones_of_tenant(tenant_id).await
    }

    /// Every region with a zone, and every region devices carry, with their device counts.
    pub async fn region_zones(&self, who: &Authorized<Read>) -> Result<Vec<RegionZoneView>> {
        self.zones_of_tenant(who.tenant_id()).await
    }

    async fn zones_of_tenant(&self, tenant_id: i64) -> Result<Vec<RegionZoneView>> {
        self.db
            .run(move |c| {
                let zones: Vec<(String, String, String, String)> = region_zones::table
                    .filter(region_zones::tenant_id.eq(tenant_id))
                    .select((
                        region_zones::country,
                        region_zones::province,
                        region_zones::city,
                        region_zones::time_zone,
                    ))
                    .load(c)?;
                #[allow(clippy::type_complexity)] // one row of a GROUP BY, read once here
                let seen: Vec<(Option<String>, Option<String>, Option<String>, i64)> = devices::table
                    .filter(devices::tenant_id.eq(tenant_id))
                    .group_by((devices::country, devices::province, devices::city))
                    .select((devices::country, devices::province, devices::city, diesel::dsl::count_star()))
                    .load(c)?;
                let groups: Vec<(RegionKey, i64)> = seen
                    .into_iter()
                    .map(|(a, b, cc, n)| ((a.unwrap_or_default(), b.unwrap_or_default(), cc.unwrap_or_default()), n))
                    .filter(|(k, _)| *k != RegionKey::default())
                    .collect();
                let zones: Vec<(RegionKey, String)> = zones.into_iter().map(|(a, b, cc, z)| ((a, b, cc), z)).collect();
                let mut keys: std::collections::BTreeSet<RegionKey> = groups.iter().map(|(k, _)| k.clone()).collect();
                keys.extend(zones.iter().map(|(k, _)| k.clone()));
                Ok(keys
                    .into_iter()
                    .map(|k| RegionZoneView {
                        region: text_of(&k),
                        time_zone: zones.iter().find(|(z, _)| *z == k).map(|(_, z)| z.clone()),
                        in_effect: most_specific(&zones, &k).map(str::to_owned),
                        devices: groups.iter().filter(|(g, _)| covers(&k, g)).map(|(_, n)| n).sum(),
                    })
                    .collect())
            })
            .await
    }

    /// Sets or removes a device's own time zone (by did or MAC).
    pub async fn set_device_time_zone(
        &self,
        who: &Authorized<Write>,
        key: &str,
        body: DeviceTimeZone,
    ) -> Result<DeviceTimeZone> {
        if let Some(z) = &body.time_zone {
            check_zone("time_zone", z)?;
        }
        let (tenant_id, key) = (who.tenant_id(), key.to_owned());
        let zone = body.time_zone.clone();
        self.db
            .write(move |c| {
                let (device, _) = crate::devices::find_in_tenant(c, tenant_id, &key)?;
                diesel::delete(device_settings::table.find(device.id)).execute(c)?;
                if let Some(z) = &zone {
                    diesel::insert_into(device_settings::table)
                        .values((device_settings::device_id.eq(device.id), device_settings::time_zone.eq(z)))
                        .execute(c)?;
                }
                Ok(())
            })
            .await?;
        Ok(body)
    }
}
