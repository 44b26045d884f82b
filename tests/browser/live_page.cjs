// Drives Debian's chromium (headless, real time) through the DevTools
// protocol with puppeteer-core: opens the collector's page, waits until the
// camera's video plays, samples it twice `seconds` apart and saves a
// screenshot. Prints one JSON line: {before, after, samples}.
//
//   node live_page.cjs URL CAMERA SCREENSHOT SECONDS [TOKEN]
//
// With CAMFLEET_DRIVE=timeline it first waits for the camera's archive
// timeline to show a gap, clicks the start of its first recorded stretch
// and samples the archive playback that click starts; the JSON also holds
// the timeline, the gap elements drawn and the export link.
// With CAMFLEET_DRIVE=label it waits for a detection with an id, as a box
// on the camera's video or in the "latest detections" list under it (boxes
// are drawn only when inference keeps up with the video), clicks it (the
// box when there is one), clicks the "false" button of the selection and
// waits for the collector's answer; the JSON's `label` holds how it
// selected (`via`), the selected id, the answer and the status shown.
// CAMFLEET_LABEL_VIA=box waits for a box only.
// Each sample: which path played (hls.js or native), currentTime, decoded
// frames, the picture's luma statistics (through a canvas), the test
// pattern's frame number read from the barcode, overlay boxes drawn.
"use strict";
const os = require("os");
const path = require("path");
const web = process.env.CAMFLEET_WEB || path.join(os.homedir(), ".cache/camfleet/web");
const puppeteer = require(path.join(web, "node_modules/puppeteer-core"));

const [url, camera, screenshot, seconds, token] = process.argv.slice(2);
let page = null;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function sample(cam) {
  const p = window.camfleet.players[cam];
  const v = p.video;
  const q = v.getVideoPlaybackQuality();
  const c = document.createElement("canvas");
  c.width = v.videoWidth;
  c.height = v.videoHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(v, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let sum = 0, sq = 0, n = 0;
  for (let i = 0; i < d.length; i += 4 * 7) {
    const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
    sum += y; sq += y * y; n++;
  }
  const mean = sum / n;
  // The test pattern's barcode (agent/src/source/test_pattern.rs): 32
  // blocks of `block` px from x = 2, y = 2; dark = 1.
  const block = Math.max(4, Math.floor(Math.floor(c.width * 4 / 5) / 32)) & ~1;
  let frame = 0, readable = true;
  for (let bit = 0; bit < 32; bit++) {
    const x0 = 2 + bit * block, lo = block / 4, hi = block - block / 4;
    let s = 0, k = 0;
    for (let row = 2 + lo; row < 2 + hi; row++)
      for (let col = x0 + lo; col < x0 + hi; col++) {
        const i = (row * c.width + col) * 4;
        s += 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]; k++;
      }
    const m = s / k;
    if (m > 90 && m < 160) readable = false;
    frame = frame * 2 + (m <= 90 ? 1 : 0);
  }
  return {
    path: p.path,
    source: p.source,
    now_ms: Date.now(),
    currentTime: v.currentTime,
    frames: q.totalVideoFrames,
    dropped: q.droppedVideoFrames,
    width: v.videoWidth,
    height: v.videoHeight,
    meanLuma: mean,
    stdLuma: Math.sqrt(Math.max(0, sq / n - mean * mean)),
    frameNumber: readable ? frame : null,
    boxesDrawn: window.camfleet.boxesDrawn,
    detectionsAvailable: window.camfleet.detectionsAvailable,
    errors: window.camfleet.errors,
    lowLatencyMode: p.hls ? p.hls.config.lowLatencyMode : null,
    stalls: p.stalls,
    jumps: p.jumps,
    targetLatency: p.hls ? p.hls.targetLatency : null,
    hlsjsLatencyMs: p.hls && p.hls.playingDate ? Date.now() - p.hls.playingDate.getTime() : null,
  };
}

(async () => {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--mute-audio"],
  });
  const logs = [];
  try {
    page = await browser.newPage();
    page.on("console", (m) => logs.push(m.text()));
    page.on("pageerror", (e) => logs.push("pageerror: " + e.message));
    await page.setViewport({ width: 960, height: 640 });
    const origin = new URL(url).origin;
    if (token) {
      const r = await page.goto(origin + "/login?token=" + encodeURIComponent(token));
      if (!r.ok()) throw new Error("login: " + r.status());
    }
    await page.goto(url, { waitUntil: "load", timeout: 20000 });
    let timeline = null;
    if (process.env.CAMFLEET_DRIVE === "timeline") {
      await page.waitForFunction(
        (cam) => window.camfleet && window.camfleet.timelines[cam] && window.camfleet.timelines[cam].holes.length > 0,
        { timeout: 40000, polling: 200 },
        camera,
      );
      timeline = await page.evaluate((cam) => {
        const card = document.getElementById("cam-" + cam);
        const t = window.camfleet.timelines[cam];
        const box = (el) => { const r = el.getBoundingClientRect(); return { x: r.left, y: r.top, w: r.width, h: r.height }; };
        return {
          spans: t.spans, holes: t.holes, segments: t.segments,
          segBoxes: [...card.querySelectorAll(".timeline .seg")].map(box),
          holeBoxes: [...card.querySelectorAll(".timeline .hole")].map(box),
          summary: card.querySelector(".tlsum").textContent,
          fleet: card.querySelector(".fleet") ? card.querySelector(".fleet").textContent : null,
        };
      }, camera);
      const first = timeline.segBoxes[0];
      await page.mouse.click(first.x + 2, first.y + first.h / 2);
      await page.waitForFunction(
        (cam) => window.camfleet.players[cam].source === "archive",
        { timeout: 10000, polling: 100 },
        camera,
      );
      timeline.exportHref = await page.evaluate(
        (cam) => document.getElementById("cam-" + cam).querySelector(".export").href, camera);
      timeline.selection = await page.evaluate((cam) => window.camfleet.timelines[cam].selection, camera);
    }
    let label = null;
    if (process.env.CAMFLEET_DRIVE === "label") {
      const target = await (await page.waitForFunction(
        (cam, boxOnly) => {
          const p = window.camfleet && window.camfleet.players[cam];
          if (!p) return null;
          const card = document.getElementById("cam-" + cam);
          const b = p.drawn && p.drawn.boxes.find((b) => b.object.id);
          if (b) {
            const r = card.querySelector("canvas").getBoundingClientRect();
            return { via: "box", x: r.left + b.x + b.w / 2, y: r.top + b.y + b.h / 2, id: b.object.id };
          }
          const item = card.querySelector(".onscreen button");
          if (item && !boxOnly) {
            const r = item.getBoundingClientRect();
            return { via: "list", x: r.left + r.width / 2, y: r.top + r.height / 2, text: item.textContent };
          }
          return null;
        },
        { timeout: 60000, polling: 50 },
        camera,
        process.env.CAMFLEET_LABEL_VIA === "box",
      )).jsonValue();
      await page.mouse.click(target.x, target.y);
      await page.waitForFunction(
        (cam) => window.camfleet.players[cam].selected && !document.getElementById("cam-" + cam).querySelector(".labelbox").hidden,
        { timeout: 5000, polling: 50 },
        camera,
      );
      const button = await page.evaluate((cam) => {
        const r = document.getElementById("cam-" + cam).querySelector(".labelbox button.false").getBoundingClientRect();
        return { x: r.left + r.width / 2, y: r.top + r.height / 2 };
      }, camera);
      const selected = await page.evaluate((cam) => window.camfleet.players[cam].selected.object.id, camera);
      await page.mouse.click(button.x, button.y);
      await page.waitForFunction(() => window.camfleet.labelResults.length > 0, { timeout: 60000, polling: 100 });
      label = await page.evaluate((cam) => {
        const box = document.getElementById("cam-" + cam).querySelector(".labelbox");
        return {
          results: window.camfleet.labelResults,
          panel: box.querySelector(".det").textContent,
          status: box.querySelector(".lstatus").textContent,
          onScreen: document.getElementById("cam-" + cam).querySelector(".onscreen").textContent,
        };
      }, camera);
      label.via = target.via;
      label.clicked = target;
      label.selected = selected;
    }
    await page.waitForFunction(
      (cam) => window.camfleet && window.camfleet.players[cam] && window.camfleet.players[cam].video.currentTime > 0,
      { timeout: 40000, polling: 100 },
      camera,
    );
    const before = await page.evaluate(sample, camera);
    const samples = [];
    const end = Date.now() + Number(seconds) * 1000;
    while (Date.now() < end) {
      await sleep(100);
      samples.push(await page.evaluate(sample, camera));
    }
    const after = await page.evaluate(sample, camera);
    await page.screenshot({ path: screenshot });
    console.log(JSON.stringify({ before, after, samples, logs, timeline, label }));
  } catch (e) {
    // What the page knew when it gave up, to say why.
    let state = null;
    try {
      state = await page.evaluate((cam) => {
        const c = window.camfleet, p = c && c.players[cam];
        if (!p) return { players: c ? Object.keys(c.players) : null };
        const last = p.detections[p.detections.length - 1];
        return {
          path: p.path, currentTime: p.video.currentTime, displayedMs: displayedCaptureMs(p),
          detections: p.detections.length, lastDetectionMs: last ? last.capture_us / 1000 : null,
          lastObjects: last ? last.objects : null, detectionsAvailable: c.detectionsAvailable,
          boxesDrawn: c.boxesDrawn, drawn: p.drawn, errors: c.errors,
        };
      }, camera);
    } catch (_) { /* the page is gone */ }
    console.log(JSON.stringify({ error: String(e), logs, state }));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
