//! Bindings: queue-to-exchange and exchange-to-exchange, kept in the store when both ends are
//! durable.

use super::VHost;
use crate::broker::exchange::{Dest, Exchange};
use crate::error::{AmqpError, AmqpResult};
use crate::store::{BindingDef, DestKind};
use amq_protocol::types::FieldTable;
use std::sync::Arc;
use tracing::warn;

impl VHost {
    /// The stored form of a binding, if it is durable (both ends durable).
    pub(super) fn binding_def(
        &self,
        source: &Exchange,
        dest: &Dest,
        key: &str,
        args: &FieldTable,
    ) -> Option<BindingDef> {
        let (durable, kind) = match dest {
            Dest::Queue(q) => (q.durable && q.exclusive_owner.is_none(), DestKind::Queue),
            Dest::Exchange(x) => (x.durable, DestKind::Exchange),
        };
        (source.durable && durable && !source.name.is_empty()).then(|| BindingDef {
            vhost: self.name.clone(),
            source: source.name.clone(),
            destination: dest.name().to_owned(),
            destination_kind: kind,
            routing_key: key.to_owned(),
            arguments: args.clone(),
        })
    }

    /// Forget a stored binding that went away as a side effect (no client waits on it).
    pub(super) fn forget_binding(
        &self,
        source: &Exchange,
        dest: &Dest,
        key: &str,
        args: &FieldTable,
    ) {
        if let Some(d) = self.binding_def(source, dest, key, args) {
            if let Err(e) = self.persist(|st| st.delete_binding(&d)) {
                warn!("{}", e.text);
            }
        }
    }

    pub(super) fn check_bindable(&self, exchange: &str) -> AmqpResult<Arc<Exchange>> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.exchange(exchange)
    }

    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: &FieldTable,
        conn: u64,
    ) -> AmqpResult<()> {
        let q = self.queue(queue, conn)?;
        let e = self.check_bindable(exchange)?;
        let dest = Dest::Queue(q.clone());
        if e.bind(dest.clone(), key, args)? {
            if let Some(d) = self.binding_def(&e, &dest, key, args) {
                if let Err(err) = self.persist(|st| st.put_binding(&d)) {
                    e.unbind(&dest, key, args);
                    return Err(err);
                }
            }
            q.bound_from
                .lock()
                .push((e.clone(), key.to_owned(), args.clone()));
            VHost::note_partition(&e, &q, args);
        }
        Ok(())
    }

    /// A client unbinds: the store first, so that a failure leaves the binding in place.
    fn forget_stored_binding(
        &self,
        source: &Exchange,
        dest: &Dest,
        key: &str,
        args: &FieldTable,
    ) -> AmqpResult<()> {
        match self.binding_def(source, dest, key, args) {
            Some(d) if source.has_binding(dest, key, args) => {
                self.persist(|st| st.delete_binding(&d))
            }
            _ => Ok(()),
        }
    }

    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: &FieldTable,
        conn: u64,
    ) -> AmqpResult<()> {
        // Unbinding what does not exist is fine, as in RabbitMQ.
        let (Ok(q), Ok(e)) = (self.queue(queue, conn), self.check_bindable(exchange)) else {
            return if exchange.is_empty() {
                self.check_bindable(exchange).map(|_| ())
            } else {
                Ok(())
            };
        };
        let dest = Dest::Queue(q.clone());
        self.forget_stored_binding(&e, &dest, key, args)?;
        if e.unbind(&dest, key, args) {
            q.bound_from
                .lock()
                .retain(|(x, k, a)| !(Arc::ptr_eq(x, &e) && k == key && a == args));
            self.maybe_auto_delete_exchange(&e);
        }
        Ok(())
    }

    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: &FieldTable,
    ) -> AmqpResult<()> {
        let d = Dest::Exchange(self.check_bindable(destination)?);
        let s = self.check_bindable(source)?;
        if s.bind(d.clone(), key, args)? {
            if let Some(def) = self.binding_def(&s, &d, key, args) {
                if let Err(err) = self.persist(|st| st.put_binding(&def)) {
                    s.unbind(&d, key, args);
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: &FieldTable,
    ) -> AmqpResult<()> {
        let (Ok(d), Ok(s)) = (
            self.check_bindable(destination),
            self.check_bindable(source),
        ) else {
            return Ok(()); // unbinding what does not exist is fine, as in RabbitMQ
        };
        let d = Dest::Exchange(d);
        self.forget_stored_binding(&s, &d, key, args)?;
        if s.unbind(&d, key, args) {
            self.maybe_auto_delete_exchange(&s);
        }
        Ok(())
    }
}
