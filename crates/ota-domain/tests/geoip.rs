//! GeoIP regions: a MaxMind DB written here byte by byte (no database is downloaded or
//! committed), read through `MaxMindRegions`, and the domain filling regions from it.

use std::net::IpAddr;
use std::sync::Arc;

use ota_domain::geoip::{MaxMindRegions, RegionLookup};
use ota_domain::{Domain, Principal};
use ota_testkit::TestDomain;
use ota_wire::dto::{Region, RegisteredVia, UpdateDeviceRequest};

/// A minimal MaxMind DB writer (https://maxmind.github.io/MaxMind-DB/): an IPv6 search tree
/// of 24-bit records with IPv4 networks under `::/96`, a data section of maps, arrays,
/// strings and unsigned integers, and the metadata map after its marker.
mod mmdb {
    pub enum Value {
        Str(String),
        U16(u16),
        U32(u32),
        U64(u64),
        Map(Vec<(String, Value)>),
        Array(Vec<Value>),
    }

    pub fn s(text: &str) -> Value {
        Value::Str(text.to_owned())
    }

    pub fn map(pairs: Vec<(&str, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// `{"en": …, "zh-CN": …}`-style names.
    pub fn names(pairs: &[(&str, &str)]) -> Value {
        map(pairs.iter().map(|(lang, name)| (*lang, s(name))).collect())
    }

    // Data-section type numbers; 8 and up are "extended" (spec, "Output Data Section").
    const STRING: u8 = 2;
    const UINT16: u8 = 5;
    const UINT32: u8 = 6;
    const MAP: u8 = 7;
    const UINT64: u8 = 9;
    const ARRAY: u8 = 11;

    /// The control byte: type in the top 3 bits (0 = extended, the type − 7 in the next
    /// byte), size in the low 5 bits, with 29/30/31 meaning 1/2/3 more size bytes that come
    /// after the extended type byte.
    fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
        let (bits, extra): (u8, Vec<u8>) = if size < 29 {
            (size as u8, vec![])
        } else if size < 29 + 256 {
            (29, vec![(size - 29) as u8])
        } else if size < 285 + 65_536 {
            (30, ((size - 285) as u16).to_be_bytes().to_vec())
        } else {
            (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
        };
        if kind <= 7 {
            out.push((kind << 5) | bits);
        } else {
            out.push(bits);
            out.push(kind - 7);
        }
        out.extend(extra);
    }

    /// Unsigned integers are big-endian in as few bytes as the value needs (0 in none).
    fn uint(out: &mut Vec<u8>, kind: u8, n: u64) {
        let bytes = n.to_be_bytes();
        let used = &bytes[(n.leading_zeros() / 8) as usize..];
        control(out, kind, used.len());
        out.extend_from_slice(used);
    }

    pub fn encode(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Str(text) => {
                control(out, STRING, text.len());
                out.extend_from_slice(text.as_bytes());
            }
            Value::U16(n) => uint(out, UINT16, u64::from(*n)),
            Value::U32(n) => uint(out, UINT32, u64::from(*n)),
            Value::U64(n) => uint(out, UINT64, *n),
            Value::Map(pairs) => {
                control(out, MAP, pairs.len());
                for (key, v) in pairs {
                    control(out, STRING, key.len());
                    out.extend_from_slice(key.as_bytes());
                    encode(v, out);
                }
            }
            Value::Array(items) => {
                control(out, ARRAY, items.len());
                for item in items {
                    encode(item, out);
                }
            }
        }
    }

    #[derive(Clone, Copy)]
    enum Record {
        Empty,
        Node(usize),
        /// Offset into the data section.
        Data(usize),
    }

    /// Networks as (IPv6 network, prefix length, record).
    pub fn build(networks: Vec<(std::net::Ipv6Addr, u8, Value)>) -> Vec<u8> {
        let mut data = Vec::new();
        let mut nodes: Vec<[Record; 2]> = vec![[Record::Empty; 2]];
        for (network, prefix, value) in networks {
            let offset = data.len();
            encode(&value, &mut data);
            let bits = u128::from(network);
            let mut node = 0;
            for depth in 0..prefix {
                let side = ((bits >> (127 - depth)) & 1) as usize;
                if depth + 1 == prefix {
                    nodes[node][side] = Record::Data(offset);
                    break;
                }
                node = match nodes[node][side] {
                    Record::Node(next) => next,
                    Record::Empty => {
                        nodes.push([Record::Empty; 2]);
                        let next = nodes.len() - 1;
                        nodes[node][side] = Record::Node(next);
                        next
                    }
                    Record::Data(_) => panic!("networks overlap"),
                };
            }
        }
        let node_count = nodes.len();
        let mut out = Vec::new();
        for node in &nodes {
            for record in node {
                // Below node_count: a node; node_count: no data; above: node_count + 16 +
                // the offset into the data section (the 16 skips the separator).
                let value = match *record {
                    Record::Node(next) => next,
                    Record::Empty => node_count,
                    Record::Data(offset) => node_count + 16 + offset,
                } as u32;
                out.extend_from_slice(&value.to_be_bytes()[1..]);
            }
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        let metadata = map(vec![
            ("node_count", Value::U32(node_count as u32)),
            ("record_size", Value::U16(24)),
            ("ip_version", Value::U16(6)),
            ("database_type", s("GeoIP2-City")),
            ("languages", Value::Array(vec![s("en"), s("zh-CN")])),
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(1_767_225_600)),
            ("description", names(&[("en", "ota-domain test regions")])),
        ]);
        encode(&metadata, &mut out);
        out
    }

    /// An IPv4 network where an IPv6 database keeps it: `::a.b.c.d`, prefix + 96.
    pub fn v4(network: [u8; 4], prefix: u8) -> (std::net::Ipv6Addr, u8) {
        (std::net::Ipv4Addr::from(network).to_ipv6_compatible(), prefix + 96)
    }
}

use mmdb::{Value, map, names, s};

/// 1.2.3.0/24 in Guangzhou, 8.8.8.0/24 in Mountain View (English names only), and an IPv6
/// block that only knows its country's ISO code.
fn test_database() -> Vec<u8> {
    let guangzhou = map(vec![
        ("country", map(vec![("iso_code", s("CN")), ("names", names(&[("en", "China"), ("zh-CN", "中国")]))])),
        (
            "subdivisions",
            Value::Array(vec![map(vec![
                ("iso_code", s("GD")),
                ("names", names(&[("en", "Guangdong"), ("zh-CN", "广东省")])),
            ])]),
        ),
        ("city", map(vec![("names", names(&[("en", "Guangzhou"), ("zh-CN", "广州市")]))])),
    ]);
    let mountain_view = map(vec![
        ("country", map(vec![("iso_code", s("US")), ("names", names(&[("en", "United States"), ("zh-CN", "美国")]))])),
        (
            "subdivisions",
            Value::Array(vec![map(vec![("iso_code", s("CA")), ("names", names(&[("en", "California")]))])]),
        ),
        ("city", map(vec![("names", names(&[("en", "Mountain View")]))])),
    ]);
    let iso_only = map(vec![("country", map(vec![("iso_code", s("JP"))]))]);
    let (gz, gz_len) = mmdb::v4([1, 2, 3, 0], 24);
    let (mv, mv_len) = mmdb::v4([8, 8, 8, 0], 24);
    let jp: std::net::Ipv6Addr = "2400:cb00::".parse().unwrap();
    mmdb::build(vec![(gz, gz_len, guangzhou), (mv, mv_len, mountain_view), (jp, 32, iso_only)])
}

fn region(country: Option<&str>, province: Option<&str>, city: Option<&str>) -> Region {
    Region { country: country.map(str::to_owned), province: province.map(str::to_owned), city: city.map(str::to_owned) }
}

fn guangzhou() -> Region {
    region(Some("China"), Some("广东省"), Some("广州市"))
}

fn mountain_view() -> Region {
    region(Some("United States"), Some("California"), Some("Mountain View"))
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn geoip_written_database_is_a_valid_mmdb() {
    let reader = maxminddb::Reader::from_source(test_database()).unwrap();
    reader.verify().unwrap();
    assert_eq!(reader.metadata().database_type, "GeoIP2-City");
    let city: maxminddb::geoip2::City = reader.lookup(ip("1.2.3.4")).unwrap().decode().unwrap().unwrap();
    assert_eq!(city.city.names.simplified_chinese, Some("广州市"));
}

#[test]
fn geoip_regions_inside_and_outside_the_networks() {
    let regions = MaxMindRegions::from_bytes(test_database()).unwrap();
    assert_eq!(regions.database_type(), "GeoIP2-City");
    assert_eq!(regions.region(ip("1.2.3.4")), Some(guangzhou()));
    assert_eq!(regions.region(ip("1.2.3.0")), Some(guangzhou()));
    assert_eq!(regions.region(ip("1.2.3.255")), Some(guangzhou()));
    // A dual-stack listener's spelling of the same IPv4 peer.
    assert_eq!(regions.region(ip("::ffff:1.2.3.4")), Some(guangzhou()));
    // No zh-CN province or city names: English is next.
    assert_eq!(regions.region(ip("8.8.8.8")), Some(mountain_view()));
    // Only an ISO code, no names.
    assert_eq!(regions.region(ip("2400:cb00::1")), Some(region(Some("JP"), None, None)));
    for outside in ["1.2.4.1", "1.2.2.255", "8.8.9.1", "9.9.9.9", "2400:cb01::1", "2001:4860::8888"] {
        assert_eq!(regions.region(ip(outside)), None, "{outside}");
    }
    for private in ["192.168.1.20", "10.0.0.7", "127.0.0.1", "::1", "fd12::1"] {
        assert_eq!(regions.region(ip(private)), None, "{private}");
    }
}

#[test]
fn geoip_language_preference_is_a_parameter() {
    let english = MaxMindRegions::from_bytes(test_database()).unwrap().with_languages(["en"]);
    assert_eq!(english.region(ip("1.2.3.4")), Some(region(Some("China"), Some("Guangdong"), Some("Guangzhou"))));
    // A language the database lacks falls back to English; the country is always English.
    let japanese = MaxMindRegions::from_bytes(test_database()).unwrap().with_languages(["ja"]);
    assert_eq!(japanese.region(ip("1.2.3.4")), Some(region(Some("China"), Some("Guangdong"), Some("Guangzhou"))));
}

#[test]
fn geoip_open_refuses_missing_and_invalid_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.mmdb");
    let err = MaxMindRegions::open(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.mmdb"), "{err}");

    let garbage = dir.path().join("garbage.mmdb");
    std::fs::write(&garbage, b"this is not a MaxMind DB").unwrap();
    let err = MaxMindRegions::open(&garbage).unwrap_err();
    assert!(err.to_string().contains("garbage.mmdb") && err.to_string().contains("not a MaxMind DB"), "{err}");

    let good = dir.path().join("City.mmdb");
    std::fs::write(&good, test_database()).unwrap();
    assert_eq!(MaxMindRegions::open(&good).unwrap().region(ip("1.2.3.4")), Some(guangzhou()));
}

async fn operator(domain: &Domain) -> Principal {
    domain.create_admin("acme", "admin", "correct-horse-battery").await.unwrap();
    let user = domain.verify_login("admin", "correct-horse-battery").await.unwrap();
    domain.session_principal(user.id, domain.clock.now_ms()).await.unwrap()
}

/// The operator's session with the capability a call needs.
fn cap<C: ota_domain::access::Capability>(who: &Principal) -> ota_domain::Authorized<C> {
    ota_domain::Authorized::check(who.clone()).unwrap()
}

async fn region_of(domain: &Domain, who: &Principal, key: &str) -> Region {
    domain.get_device(&cap(who), key).await.unwrap().region
}

#[tokio::test]
async fn geoip_fills_only_regions_nobody_set() {
    let t = TestDomain::new();
    let regions = MaxMindRegions::from_bytes(test_database()).unwrap();
    let domain = t.domain.clone().with_geoip(Arc::new(regions));
    let who = operator(&domain).await;
    let pk = domain.create_product(&cap(&who), "lamp", None, None).await.unwrap().product_key;
    let csv = "mac,region\n5CCF7F000001,浙江省-杭州市\n5CCF7F000002,\n";
    let report = domain.import_devices(&cap(&who), &pk, csv.as_bytes().to_vec(), false).await.unwrap();
    assert_eq!(report.added, 2);
    let register = |mac: &'static str, from: &'static str| {
        let (domain, pk) = (domain.clone(), pk.clone());
        async move {
            domain.register_device(&pk, mac, "PASSCODEAA", RegisteredVia::Plain, Some(from.to_owned())).await.unwrap()
        }
    };

    // A new device from 1.2.3.4 gets the database's region.
    let new = register("5CCF7F0000AA", "1.2.3.4").await;
    assert_eq!(region_of(&domain, &who, &new).await, guangzhou());

    // An imported region is kept; an imported device without one is filled.
    let imported = register("5CCF7F000001", "1.2.3.4").await;
    assert_eq!(region_of(&domain, &who, &imported).await, region(None, Some("浙江省"), Some("杭州市")));
    let imported_bare = register("5CCF7F000002", "8.8.8.8").await;
    assert_eq!(region_of(&domain, &who, &imported_bare).await, mountain_view());

    // A filled region stays when the device turns up elsewhere: only empty regions are filled.
    register("5CCF7F0000AA", "8.8.8.8").await;
    domain.provision_device(&new, None, Some("8.8.8.8".into())).await.unwrap();
    assert_eq!(region_of(&domain, &who, &new).await, guangzhou());

    // Behind NAT there is nothing to look up; a later provision from a public address fills it.
    let natted = register("5CCF7F0000BB", "192.168.1.20").await;
    assert_eq!(region_of(&domain, &who, &natted).await, Region::default());
    domain.provision_device(&natted, None, Some("1.2.3.4".into())).await.unwrap();
    assert_eq!(region_of(&domain, &who, &natted).await, guangzhou());

    // An operator's edit, even of one part only, is never overwritten.
    let edited = register("5CCF7F0000CC", "10.0.0.7").await;
    let edit =
        UpdateDeviceRequest { country: None, province: None, city: Some(Some("深圳市".into())), metadata: None };
    domain.update_device(&cap(&who), &edited, edit).await.unwrap();
    domain.provision_device(&edited, None, Some("1.2.3.4".into())).await.unwrap();
    register("5CCF7F0000CC", "1.2.3.4").await;
    assert_eq!(region_of(&domain, &who, &edited).await, region(None, None, Some("深圳市")));

    // Without a database nothing is guessed.
    let plain =
        t.domain.register_device(&pk, "5CCF7F0000DD", "PASSCODEAA", RegisteredVia::Plain, Some("1.2.3.4".into()));
    let plain = plain.await.unwrap();
    assert_eq!(region_of(&domain, &who, &plain).await, Region::default());
}
