//! Membership: forming the cluster from the seeds or joining it, adding and removing members,
//! handing a single node's definitions over, and the members' status.

use super::*;

impl Cluster {
    pub(super) async fn add_member(&self, id: NodeId, member: Member) -> Result<(), String> {
        self.meta
            .add_learner(id, member, true)
            .await
            .map_err(|e| e.to_string())?;
        let voters: BTreeSet<NodeId> = [id].into();
        match self
            .meta
            .change_membership(ChangeMembers::AddVoterIds(voters), false)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub(super) async fn remove_member(&self, id: NodeId) -> Result<(), String> {
        let voters: BTreeSet<NodeId> = [id].into();
        self.meta
            .change_membership(ChangeMembers::RemoveVoters(voters), false)
            .await
            .map_err(|e| e.to_string())?;
        let nodes: BTreeSet<NodeId> = [id].into();
        self.meta
            .change_membership(ChangeMembers::RemoveNodes(nodes), false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub(super) fn initialized(&self) -> bool {
        self.meta
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_some()
    }

    /// Form the cluster with the seeds, or join the one they belong to.
    pub(super) async fn form_or_join(self: Arc<Self>) {
        let mut logged_waiting = false;
        let mut pause = Duration::from_millis(300);
        // Seeds that turned out to be this node (asked once: the link refuses a node its own
        // name, with a warning).
        let mut ourselves: BTreeSet<String> = [self.addr.clone()].into();
        if self.initialized() {
            // Already in a cluster: say hello to the seeds once, so that a node of another
            // cluster (or one without the secret, or of another version) among them is refused
            // and logged now, on both sides, rather than never noticed.
            for seed in &self.settings.seeds {
                match self.call(seed, &Control::Hello).await {
                    Ok(ControlReply::Hello(h)) => self.book.learn(h.id, seed),
                    Err(LinkError::Refused(why)) if why.contains(&self.name) => {
                        self.book.mine(seed)
                    }
                    Err(LinkError::Refused(why)) => warn!("seed {seed} refused: {why}"),
                    _ => {}
                }
            }
            return;
        }
        loop {
            if self.initialized() {
                return;
            }
            let mut answered: BTreeMap<NodeId, Member> = BTreeMap::new();
            answered.insert(
                self.me,
                Member {
                    name: self.name.clone(),
                    addr: self.addr.clone(),
                },
            );
            let mut missing = Vec::new();
            let mut existing = None;
            for seed in &self.settings.seeds {
                if ourselves.contains(seed) {
                    continue;
                }
                match self.call(seed, &Control::Hello).await {
                    Ok(ControlReply::Hello(h)) => {
                        if h.id == self.me {
                            continue;
                        }
                        self.book.learn(h.id, seed);
                        if h.initialized {
                            existing = Some(seed.clone());
                        }
                        answered.insert(
                            h.id,
                            Member {
                                name: h.name,
                                addr: h.addr,
                            },
                        );
                    }
                    Ok(_) => missing.push(seed.clone()),
                    Err(LinkError::Refused(why)) if why.contains(&self.name) => {
                        self.book.mine(seed);
                        ourselves.insert(seed.clone());
                    }
                    Err(e) => {
                        if !logged_waiting {
                            info!("waiting for seed {seed}: {e}");
                        }
                        missing.push(seed.clone())
                    }
                }
            }
            if let Some(seed) = existing {
                let req = Control::Join {
                    id: self.me,
                    member: answered[&self.me].clone(),
                };
                match self.join_via(&seed, &req).await {
                    Ok(()) => {
                        info!("joined the cluster through {seed}");
                        return;
                    }
                    Err(e) => warn!("cannot join the cluster through {seed}: {e}"),
                }
            } else if missing.is_empty() {
                let lowest = *answered.keys().next().expect("this node is in it");
                if lowest == self.me {
                    let names: Vec<_> = answered.values().map(|m| m.name.clone()).collect();
                    match self.meta.initialize(answered).await {
                        Ok(()) => {
                            info!("formed a cluster of {}", names.join(", "));
                            let cluster_id = format!("{:032x}", rand::random::<u128>());
                            if let Err(e) = self.propose(MetaOp::Form { cluster_id }).await {
                                warn!("cannot record the new cluster's id: {e}");
                            }
                            return;
                        }
                        Err(e) => warn!("cannot form the cluster: {e}"),
                    }
                }
            }
            logged_waiting = true;
            tokio::time::sleep(pause).await;
            // Seeds that refuse (another secret, version or cluster) are asked ever less often.
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Ask the node at `seed` to add this node (it passes the request on to its leader).
    pub(super) async fn join_via(&self, seed: &str, req: &Control) -> Result<(), String> {
        self.call_within(seed, req, MEMBERSHIP_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Join the cluster the node at `addr` belongs to (`rabbitmqctl join_cluster`): only a node
    /// that is not yet in a cluster of its own can.
    pub async fn join_cluster(&self, addr: &str) -> Result<(), String> {
        if self.initialized() {
            return Err(format!(
                "{} is already a member of a cluster: to move it to another, start it with an \
                 empty data directory and that cluster's seeds",
                self.name
            ));
        }
        let h = match self.call(addr, &Control::Hello).await {
            Ok(ControlReply::Hello(h)) => h,
            Ok(_) => return Err(format!("{addr}: unexpected answer")),
            Err(e) => return Err(format!("{addr}: {e}")),
        };
        if !h.initialized {
            return Err(format!("{} ({addr}) is not in a cluster yet", h.name));
        }
        self.book.learn(h.id, addr);
        let req = Control::Join {
            id: self.me,
            member: Member {
                name: self.name.clone(),
                addr: self.addr.clone(),
            },
        };
        self.join_via(addr, &req).await?;
        // Its seeds did not form this cluster (one at least never answered, or this node would
        // be in a cluster already): waiting for them would keep every other member unreachable,
        // now and after a restart.
        let seeds = self.book.give_up_seeds();
        if !seeds.is_empty() {
            let file = self.settings.dir.join(SEEDS_GIVEN_UP);
            let mut text = seeds.join("\n");
            text.push('\n');
            if let Err(e) = crate::cluster::meta::write_durably(&file, text.as_bytes()) {
                warn!("{}: {e}", file.display());
            }
        }
        Ok(())
    }

    /// Once the cluster is formed or joined, propose `ops` (this node's definitions from before
    /// it was in a cluster), once: `marker` records that it was done.
    pub async fn adopt(self: Arc<Self>, ops: Vec<MetaOp>, marker: PathBuf) {
        // Only a node new to the cluster hands over what it had: once in it, its stored
        // definitions are the cluster's own (re-proposing them could bring back what the
        // cluster deleted while this node was down).
        let fresh = self.meta.metrics().borrow().last_applied.is_none();
        if marker.exists() || !fresh || ops.is_empty() {
            if !marker.exists() {
                if let Err(e) = crate::cluster::meta::write_durably(&marker, b"done\n") {
                    warn!("{}: {e}", marker.display());
                }
            }
            return;
        }
        while self.cluster_id.get().is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let n = ops.len();
        let mut refused = 0;
        for op in ops {
            match self.propose(op.clone()).await {
                Ok(a) => {
                    if let Some(r) = a.error {
                        refused += 1;
                        warn!(
                            "this node's definition was refused by the cluster: {op:?}: {}",
                            r.text
                        );
                    }
                }
                Err(e) => {
                    warn!("cannot hand this node's definitions to the cluster yet: {e}");
                    return;
                }
            }
        }
        info!("this node's {n} stored definitions are now the cluster's ({refused} refused)");
        if let Err(e) = crate::cluster::meta::write_durably(&marker, b"done\n") {
            warn!("{}: {e}", marker.display());
        }
    }

    /// Remove the node named `name` from the cluster.
    pub async fn forget_node(&self, name: &str) -> Result<(), String> {
        let id = node_id(name);
        let m = self.meta.metrics().borrow().membership_config.clone();
        if m.membership().get_node(&id).is_none() {
            return Err(format!("{name} is not a member of this cluster"));
        }
        self.on_leader(Control::Forget { id }).await
    }

    pub(super) async fn on_leader(&self, req: Control) -> Result<(), String> {
        match self.leader() {
            Some(l) if l == self.me => self.control(req).await.map(|_| ()),
            Some(l) => {
                let addr = self
                    .addr_of(l)
                    .await
                    .ok_or("the leader's address is unknown")?;
                self.call_within(&addr, &req, MEMBERSHIP_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            None => Err(self.unavailable()),
        }
    }

    /// Every member, with whether it answers this node now (each is asked, briefly).
    pub async fn status(&self) -> Status {
        let m = self.meta.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let leader = m.current_leader;
        let nodes: Vec<(NodeId, Member)> = membership
            .nodes()
            .map(|(id, member)| (*id, member.clone()))
            .collect();
        let pings = nodes.iter().map(|(id, member)| {
            let me = *id == self.me;
            async move {
                if me {
                    return true;
                }
                let Some(addr) = self.book.addr(&self.link, *id, member).await else {
                    return false;
                };
                matches!(
                    tokio::time::timeout(
                        Duration::from_millis(700),
                        self.call(&addr, &Control::Hello)
                    )
                    .await,
                    Ok(Ok(_))
                )
            }
        });
        let running = futures_util::future::join_all(pings).await;
        let members = nodes
            .into_iter()
            .zip(running)
            .map(|((id, member), running)| MemberStatus {
                name: member.name,
                id,
                addr: member.addr,
                voter: voters.contains(&id),
                running,
                leader: leader == Some(id),
                me: id == self.me,
            })
            .collect();
        Status {
            node_name: self.name.clone(),
            cluster_id: self.cluster_id.get().cloned(),
            leader: leader.and_then(|l| membership.get_node(&l).map(|m| m.name.clone())),
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index),
            members,
        }
    }
}
