//! A device's region from its IP address, when a MaxMind-format GeoIP database is configured.
//!
//! Push rules target devices by region (country / province / city). Operators set regions by
//! editing devices and importing CSV files; a GeoIP2 or GeoLite2 City (or Country) database
//! (`.mmdb`) can fill the region of a device that registers or provisions without one. A
//! region that is already set is never overwritten: an operator or an import knows better
//! than a database of address blocks.
//!
//! The database is read into memory once; a lookup is a walk of at most 128 tree nodes and
//! one small decode, so it is done inline on the request path.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use diesel::prelude::*;
use ota_wire::dto::Region;
use serde::Deserialize;

use crate::Domain;
use crate::db::DbConn;
use crate::schema::devices;

/// Where a region for an address comes from.
pub trait RegionLookup: Send + Sync {
    /// The region of a public address, or `None` when the source knows nothing about it.
    /// Private, loopback and other non-routable addresses have no region.
    fn region(&self, ip: IpAddr) -> Option<Region>;
}

/// Name languages tried, in order, for provinces and cities: the console's regions are
/// Chinese (`广东省` / `广州市`), so Simplified Chinese first, then English.
pub const DEFAULT_LANGUAGES: &[&str] = &["zh-CN", "en"];

/// Opening a GeoIP database failed: the file is missing, unreadable or not a MaxMind DB.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct GeoIpError {
    pub path: PathBuf,
    pub reason: String,
}

/// A GeoIP2 / GeoLite2 City or Country database, held in memory.
pub struct MaxMindRegions {
    reader: maxminddb::Reader<Vec<u8>>,
    languages: Vec<String>,
}

impl std::fmt::Debug for MaxMindRegions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaxMindRegions")
            .field("database_type", &self.database_type())
            .field("languages", &self.languages)
            .finish()
    }
}

impl MaxMindRegions {
    /// Reads a `.mmdb` file into memory, with the [`DEFAULT_LANGUAGES`].
    pub fn open(path: &Path) -> Result<MaxMindRegions, GeoIpError> {
        let error = |reason: String| GeoIpError { path: path.to_owned(), reason };
        let bytes = std::fs::read(path).map_err(|e| error(format!("cannot read the file: {e}")))?;
        Self::from_bytes(bytes).map_err(|e| error(e.reason))
    }

    /// A database already in memory (tests build theirs).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<MaxMindRegions, GeoIpError> {
        let reader = maxminddb::Reader::from_source(bytes).map_err(|e| GeoIpError {
            path: PathBuf::from("<memory>"),
            reason: format!("not a MaxMind DB file: {e}"),
        })?;
        Ok(MaxMindRegions { reader, languages: DEFAULT_LANGUAGES.iter().map(|l| (*l).to_owned()).collect() })
    }

    /// The languages tried, in order, for province and city names (the database's locale
    /// codes, e.g. `zh-CN`, `en`, `ja`). A name in none of them falls back to English.
    pub fn with_languages<I, S>(mut self, languages: I) -> MaxMindRegions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.languages = languages.into_iter().map(Into::into).collect();
        self
    }

    /// The `database_type` of the file's metadata, e.g. `GeoLite2-City`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// The search tree's node count (a size hint for the startup log).
    pub fn node_count(&self) -> u32 {
        self.reader.metadata().node_count
    }

    fn pick<'a>(&self, place: &Place<'a>) -> Option<&'a str> {
        self.languages
            .iter()
            .map(String::as_str)
            .chain(["en"])
            .find_map(|lang| place.names.get(lang).copied())
            .map(str::trim)
            .filter(|n| fits(n))
    }
}

impl RegionLookup for MaxMindRegions {
    fn region(&self, ip: IpAddr) -> Option<Region> {
        // A dual-stack listener reports IPv4 peers as `::ffff:a.b.c.d`.
        let ip = ip.to_canonical();
        if !is_public(ip) {
            return None;
        }
        let record: GeoRecord<'_> = match self.reader.lookup(ip).and_then(|found| found.decode()) {
            Ok(Some(record)) => record,
            Ok(None) => return None,
            Err(e) => {
                // An IPv6 address in an IPv4-only database, or a corrupt record: no region.
                tracing::debug!(%ip, error = %e, "GeoIP lookup failed");
                return None;
            }
        };
        let country = record.country.as_ref().and_then(|c| {
            c.names.get("en").copied().map(str::trim).filter(|n| fits(n)).or(c.iso_code.filter(|n| fits(n)))
        });
        let province = record.subdivisions.first().and_then(|s| self.pick(s));
        let city = record.city.as_ref().and_then(|c| self.pick(c));
        let region = Region {
            country: country.map(str::to_owned),
            province: province.map(str::to_owned),
            city: city.map(str::to_owned),
        };
        (region != Region::default()).then_some(region)
    }
}

/// The part of a GeoIP2 City / Country record a region needs. Our own shape rather than the
/// crate's `geoip2` structs, so that any locale code can be asked for.
#[derive(Deserialize)]
struct GeoRecord<'a> {
    #[serde(borrow, default)]
    country: Option<Place<'a>>,
    /// Largest first: the province, then (in some countries) a smaller division.
    #[serde(borrow, default)]
    subdivisions: Vec<Place<'a>>,
    #[serde(borrow, default)]
    city: Option<Place<'a>>,
}

#[derive(Deserialize)]
struct Place<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    names: BTreeMap<&'a str, &'a str>,
}

/// A name the region rules accept (as for operator edits): 1–64 characters without `/`
/// (the console joins regions with it) or line breaks.
fn fits(name: &str) -> bool {
    !name.is_empty() && name.chars().count() <= 64 && !name.contains(['/', '\n', '\r'])
}

/// Whether an address is globally routable enough to have a place: private networks,
/// loopback, link-local, CGNAT and the like are where the server is, not where the device is.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || is_shared(v4))
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local())
        }
    }
}

/// 100.64.0.0/10, carrier-grade NAT (RFC 6598).
fn is_shared(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    a == 100 && (b & 0xC0) == 64
}

impl Domain {
    /// The region the configured GeoIP database gives a device's address, if any.
    pub(crate) fn region_from_ip(&self, ip: Option<&str>) -> Option<Region> {
        let lookup = self.geoip.as_ref()?;
        let ip: IpAddr = ip?.trim().parse().ok()?;
        lookup.region(ip)
    }
}

/// Sets a region guessed from the device's IP, only on a row that has none at all: a region an
/// operator or an import set (even partly) is never overwritten. The condition is in the
/// statement itself, so an edit that landed first always wins.
pub(crate) fn fill_missing_region(c: &mut DbConn, device_id: i64, region: &Region) -> crate::Result<()> {
    diesel::update(
        devices::table
            .find(device_id)
            .filter(devices::country.is_null().and(devices::province.is_null()).and(devices::city.is_null())),
    )
    .set((devices::country.eq(&region.country), devices::province.eq(&region.province), devices::city.eq(&region.city)))
    .execute(c)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s} is an address"))
    }

    #[test]
    fn geoip_skips_addresses_that_have_no_place() {
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.20",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
        for public in ["1.2.3.4", "8.8.8.8", "100.128.0.1", "2400:cb00::1"] {
            assert!(is_public(ip(public)), "{public}");
        }
        assert!(!is_public(ip("::ffff:192.168.1.1").to_canonical()));
    }

    #[test]
    fn geoip_names_follow_the_region_rules() {
        assert!(fits("广东省"));
        assert!(!fits(""));
        assert!(!fits("a/b"));
        assert!(!fits(&"x".repeat(65)));
    }
}
