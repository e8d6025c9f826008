//! What operators do to a started rule: pause, resume, cancel, advance to the next wave, take
//! devices out; and what they look at before and across rules: the preflight and the list of
//! every rule of the tenant. Status changes go through [`super::status::next`].

use diesel::prelude::*;
use ota_wire::dto::Page;
use ota_wire::rollout::{ExcludeRequest, ExcludeResult, Preflight, PreflightQuery, RuleListQuery};
use ota_wire::rules::RuleView;

use super::schedule::{advance_wave, set_status};
use super::status::Action;
use super::{RuleRecord, find_rule, maclists, wrong_status};
use crate::Domain;
use crate::access::{Authorized, Push, Read};
use crate::db::DbConn;
use crate::error::{DomainError, Result};
use crate::firmware::FirmwareRecord;
use crate::lifecycle::{Context, Event};
use crate::paging::PageRequest;
use crate::schema::{devices, firmware, mac_list_entries, products, rules, upgrades};
use crate::stored::Stored;
use crate::upgrades::events::{RecordEvent, apply_events, cancel_rule_targets};

/// At most this many MACs inline in one `exclude`.
const MAX_EXCLUDE_INLINE: usize = 10_000;

impl Domain {
    /// Runs `f` on the rule under a write transaction and answers the rule's view.
    async fn act_on_rule(
        &self,
        who: &Authorized<Push>,
        id: i64,
        f: impl FnOnce(&mut DbConn, &RuleRecord, &FirmwareRecord, i64) -> Result<()> + Send + 'static,
    ) -> Result<RuleView> {
        let now = self.clock.now_ms();
        let tenant_id = who.tenant_id();
        self.db
            .write(move |c| {
                let (rule, fw, _) = find_rule(c, tenant_id, id)?;
                f(c, &rule, &fw, now)
            })
            .await?;
        self.rule_of_tenant(tenant_id, id).await
    }

    /// `POST /rules/{id}/pause`: no new pushes, offers only to devices on their way.
    pub async fn pause_rule(&self, who: &Authorized<Push>, id: i64) -> Result<RuleView> {
        self.act_on_rule(who, id, |c, rule, _, now| set_status(c, rule, Action::Pause, now).map(|_| ())).await
    }

    /// `POST /rules/{id}/resume`: a paused or halted rule goes on where it stopped.
    pub async fn resume_rule(&self, who: &Authorized<Push>, id: i64) -> Result<RuleView> {
        self.act_on_rule(who, id, |c, rule, _, now| set_status(c, rule, Action::Resume, now).map(|_| ())).await
    }

    /// `POST /rules/{id}/cancel`: the rule ends; its targets not succeeded are cancelled.
    pub async fn cancel_rule(&self, who: &Authorized<Push>, id: i64) -> Result<RuleView> {
        let by = who.username().to_owned();
        let delivery = self.settings.delivery_timeout_ms;
        self.act_on_rule(who, id, move |c, rule, fw, now| {
            set_status(c, rule, Action::Cancel, now)?;
            let policy = rule.policy()?;
            let ctx =
                Context { now, fw_type: fw.fw_type(), policy: &policy, opening: None, delivery_timeout_ms: delivery };
            cancel_rule_targets(c, rule.id, &by, &ctx, delivery)?;
            Ok(())
        })
        .await
    }

    /// `POST /rules/{id}/advance`: starts the next wave now.
    pub async fn advance_rule(&self, who: &Authorized<Push>, id: i64) -> Result<RuleView> {
        self.act_on_rule(who, id, |c, rule, _, now| {
            set_status(c, rule, Action::Advance, now)?;
            if !advance_wave(c, rule, now)? {
                return Err(wrong_status(rule, "the last wave is being pushed already"));
            }
            Ok(())
        })
        .await
    }

    /// `POST /rules/{id}/exclude`: takes devices (by MAC) out of a paused or halted rule.
    pub async fn exclude_from_rule(
        &self,
        who: &Authorized<Push>,
        id: i64,
        req: ExcludeRequest,
    ) -> Result<ExcludeResult> {
        let inline = match (&req.macs, req.mac_list_id) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(DomainError::invalid("macs", "give either `macs` or `mac_list_id`"));
            }
            (Some(text), None) => {
                let parsed = maclists::parse(text)?;
                if parsed.invalid_count > 0 || parsed.macs.is_empty() || parsed.macs.len() > MAX_EXCLUDE_INLINE {
                    return Err(DomainError::with_details(
                        ota_wire::ErrorCode::InvalidField,
                        format!("1–{MAX_EXCLUDE_INLINE} MACs, every entry a MAC"),
                        serde_json::json!({ "field": "macs", "invalid": parsed.invalid }),
                    ));
                }
                Some(parsed.macs)
            }
            (None, Some(_)) => None,
        };
        let (tenant_id, now, by) = (who.tenant_id(), self.clock.now_ms(), who.username().to_owned());
        let delivery = self.settings.delivery_timeout_ms;
        self.db
            .write(move |c| {
                let (rule, fw, _) = find_rule(c, tenant_id, id)?;
                set_status(c, &rule, Action::Exclude, now)?;
                let macs = match (inline, req.mac_list_id) {
                    (Some(macs), _) => macs,
                    (None, Some(list)) => {
                        super::check_list(c, &fw, list)?;
                        mac_list_entries::table
                            .filter(mac_list_entries::list_id.eq(list))
                            .select(mac_list_entries::mac)
                            .load(c)?
                    }
                    (None, None) => Vec::new(),
                };
                let mut ids: Vec<i64> = Vec::new();
                for chunk in macs.chunks(1000) {
                    let found: Vec<i64> = upgrades::table
                        .inner_join(devices::table)
                        .filter(upgrades::rule_id.eq(rule.id))
                        .filter(upgrades::active.eq(true))
                        .filter(devices::mac.assume_not_null().eq_any(chunk))
                        .select(upgrades::id)
                        .load(c)?;
                    ids.extend(found);
                }
                let event = Event::Excluded { by };
                let events: Vec<RecordEvent> =
                    ids.iter().map(|id| RecordEvent { upgrade_id: *id, event: event.clone() }).collect();
                let excluded = apply_events(c, &events, now, delivery)? as i64;
                Ok(ExcludeResult { excluded, skipped: macs.len() as i64 - excluded })
            })
            .await
    }

    /// `GET /rules`: every rule of the tenant, newest first, by product, firmware and status.
    pub async fn list_all_rules(&self, who: &Authorized<Read>, q: RuleListQuery) -> Result<Page<RuleView>> {
        let page = PageRequest::new(q.page, q.per_page)?;
        let (tenant_id, now) = (who.tenant_id(), self.clock.now_ms());
        let this = self.clone();
        self.db
            .snapshot(move |c| {
                let filtered = || {
                    let mut b =
                        rules::table.inner_join(products::table).filter(rules::tenant_id.eq(tenant_id)).into_boxed();
                    if let Some(pk) = &q.product_key {
                        b = b.filter(products::product_key.eq(pk.clone()));
                    }
                    if let Some(fw) = q.firmware_id {
                        b = b.filter(rules::firmware_id.eq(fw));
                    }
                    if let Some(status) = q.status {
                        b = b.filter(rules::status.eq(Stored(status)));
                    }
                    b
                };
                let total: i64 = filtered().count().get_result(c)?;
                let rows: Vec<(RuleRecord, String)> = filtered()
                    .order(rules::id.desc())
                    .limit(page.limit())
                    .offset(page.offset())
                    .select((RuleRecord::as_select(), products::product_key))
                    .load(c)?;
                let mut items = Vec::with_capacity(rows.len());
                for (rule, pk) in rows {
                    let fw: FirmwareRecord =
                        firmware::table.find(rule.firmware_id).select(FirmwareRecord::as_select()).first(c)?;
                    items.push(this.rule_view_in(c, &rule, &fw, &pk, now)?);
                }
                Ok(page.wrap(items, total))
            })
            .await
    }

    /// `GET /rules/{id}/preflight`: per wave, what the rule would push to if it started now.
    pub async fn rule_preflight(&self, who: &Authorized<Read>, id: i64, q: PreflightQuery) -> Result<Preflight> {
        let days = q.offline_days.unwrap_or(7);
        if !(1..=3650).contains(&days) {
            return Err(DomainError::field(
                ota_wire::ErrorCode::InvalidQuery,
                "offline_days",
                "offline_days must be 1–3650",
            ));
        }
        let (tenant_id, now, cfg) = (who.tenant_id(), self.clock.now_ms(), self.settings.series_rules);
        self.db
            .run(move |c| {
                let (rule, fw, _) = find_rule(c, tenant_id, id)?;
                super::targets::preflight(c, &fw, &rule, cfg, days, now)
            })
            .await
    }
}
