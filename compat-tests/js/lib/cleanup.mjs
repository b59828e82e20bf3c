// Every client a test opens is registered here and closed after each test,
// so a failing test never leaves sockets that keep the process alive.
const resources = new Set();

export function track(resource) {
  resources.add(resource);
  return resource;
}

export async function closeAll() {
  const list = [...resources];
  resources.clear();
  for (const r of list) {
    try {
      if (typeof r.disconnect === 'function') r.disconnect();
      else if (typeof r.close === 'function') await r.close();
    } catch {
      // already closed
    }
  }
}
