//! Small bounded tables of ids the gateway remembers per scope (a proxy, a key): MCP sessions
//! and tasks, conversations whose placeholders carry over.

use std::collections::HashMap;

/// Ids handed out in a scope (sessions and tasks on a proxy, conversations of a key) and what the
/// gateway knows of each, oldest forgotten first past a fixed number.
pub(crate) struct Remembered<V> {
    map: HashMap<(String, String), V>,
    order: std::collections::VecDeque<(String, String)>,
    max: usize,
}

impl<V> Remembered<V> {
    pub(crate) fn new(max: usize) -> Self {
        Remembered {
            map: HashMap::new(),
            order: std::collections::VecDeque::new(),
            max,
        }
    }

    pub(crate) fn get(&self, scope: &str, id: &str) -> Option<&V> {
        self.map.get(&(scope.to_string(), id.to_string()))
    }

    pub(crate) fn insert(&mut self, scope: &str, id: &str, v: V) {
        let k = (scope.to_string(), id.to_string());
        if self.map.insert(k.clone(), v).is_some() {
            return;
        }
        if self.order.len() >= self.max
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        self.order.push_back(k);
    }

    pub(crate) fn remove(&mut self, scope: &str, id: &str) -> Option<V> {
        let k = (scope.to_string(), id.to_string());
        let v = self.map.remove(&k)?;
        self.order.retain(|o| *o != k);
        Some(v)
    }
}

/// A [`Remembered`] table behind a lock (a poisoned lock still holds consistent data: every
/// write is one insert or removal).
pub(crate) struct Locked<V>(std::sync::Mutex<Remembered<V>>);

impl<V> Locked<V> {
    pub(crate) fn new(max: usize) -> Self {
        Locked(std::sync::Mutex::new(Remembered::new(max)))
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Remembered<V>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
