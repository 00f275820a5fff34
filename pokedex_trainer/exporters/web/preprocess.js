// The trainer's preprocessing, in the browser: decode with the EXIF orientation applied and no
// colour-profile conversion (as Pillow decodes), transparency over white, then OpenCV's
// cv2.resize(..., INTER_AREA) arithmetic (float32 sums, round half to even), RGB 0..255.
"use strict";

const PokedexPreprocess = (() => {
  const f32 = Math.fround;

  // cvRound: round half to even, then saturate to 0..255
  function toByte(value) {
    let r = Math.round(value);
    if (Math.abs(value % 1) === 0.5 && r % 2 !== 0) r -= 1;
    return r < 0 ? 0 : r > 255 ? 255 : r;
  }

  // saturate_cast<short>: round half to even, clamp to a 16-bit integer
  function toByteShort(value) {
    let r = Math.round(value);
    if (Math.abs(value % 1) === 0.5 && r % 2 !== 0) r -= 1;
    return Math.max(-32768, Math.min(32767, r));
  }

  // computeResizeAreaTab: (destination index, source index, weight) triples of one axis
  function areaTable(ssize, dsize, scale) {
    const tab = [];
    for (let dx = 0; dx < dsize; dx++) {
      const fsx1 = dx * scale, fsx2 = fsx1 + scale;
      const cellWidth = Math.min(scale, ssize - fsx1);
      let sx1 = Math.ceil(fsx1), sx2 = Math.floor(fsx2);
      sx2 = Math.min(sx2, ssize - 1);
      sx1 = Math.min(sx1, sx2);
      if (sx1 - fsx1 > 1e-3) tab.push([dx, sx1 - 1, f32((sx1 - fsx1) / cellWidth)]);
      for (let sx = sx1; sx < sx2; sx++) tab.push([dx, sx, f32(1 / cellWidth)]);
      if (fsx2 - sx2 > 1e-3) {
        tab.push([dx, sx2, f32(Math.min(Math.min(fsx2 - sx2, 1), cellWidth) / cellWidth)]);
      }
    }
    return tab;
  }

  // Downscaling on both axes (the usual case: a photo larger than the model's input)
  function resizeAreaDown(src, sw, sh, dw, dh) {
    // OpenCV's scale is 1 / (dsize / ssize), which can differ from ssize / dsize in its last bit
    const xtab = areaTable(sw, dw, 1 / (dw / sw)), ytab = areaTable(sh, dh, 1 / (dh / sh));
    const dst = new Uint8Array(dw * dh * 3);
    const buf = new Float32Array(dw * 3), sum = new Float32Array(dw * 3);
    let prev = ytab[0][0];
    const flush = (dy) => {
      for (let i = 0; i < dw * 3; i++) dst[dy * dw * 3 + i] = toByte(sum[i]);
    };
    for (const [dy, sy, beta] of ytab) {
      buf.fill(0);
      const row = sy * sw * 3;
      for (const [dx, sx, alpha] of xtab) {
        for (let c = 0; c < 3; c++) {
          buf[dx * 3 + c] = f32(buf[dx * 3 + c] + f32(src[row + sx * 3 + c] * alpha));
        }
      }
      if (dy !== prev) {
        flush(prev);
        for (let i = 0; i < dw * 3; i++) sum[i] = f32(beta * buf[i]);
        prev = dy;
      } else {
        for (let i = 0; i < dw * 3; i++) sum[i] = f32(sum[i] + f32(beta * buf[i]));
      }
    }
    flush(prev);
    return dst;
  }

  // An exact integer factor on both axes: OpenCV's fast path (block mean; 2x2 rounds half up)
  function resizeAreaFast(src, sw, sh, dw, dh, sx, sy) {
    const dst = new Uint8Array(dw * dh * 3);
    const area = sx * sy, scale = f32(1 / area);
    for (let dy = 0; dy < dh; dy++) {
      for (let dx = 0; dx < dw; dx++) {
        for (let c = 0; c < 3; c++) {
          let total = 0;
          for (let y = 0; y < sy; y++) {
            const row = (dy * sy + y) * sw * 3;
            for (let x = 0; x < sx; x++) total += src[row + (dx * sx + x) * 3 + c];
          }
          dst[(dy * dw + dx) * 3 + c] = area === 4 && sx === 2 ?
            (total + 2) >> 2 : toByte(f32(total * scale));
        }
      }
    }
    return dst;
  }

  // An axis that grows: OpenCV's INTER_AREA uses linear weights with its "area" offsets
  function linearAreaWeights(ssize, dsize) {
    const scale = ssize / dsize, inv = dsize / ssize, out = [];
    for (let d = 0; d < dsize; d++) {
      let s = Math.floor(d * scale);
      let f = f32((d + 1) - (s + 1) * inv);
      f = f <= 0 ? 0 : f - Math.floor(f);
      if (s < 0) { s = 0; f = 0; }
      if (s + 1 >= ssize) { s = ssize - 1; f = 0; }
      out.push([s, Math.min(s + 1, ssize - 1), f]);
    }
    return out;
  }

  // OpenCV's 8-bit linear arithmetic: weights in 1/2048ths, the horizontal pass in integers,
  // the vertical one as its SIMD code computes it (high halves of 16-bit products, then
  // (v + 2) >> 2)
  function resizeAreaLinear(src, sw, sh, dw, dh) {
    const fixed = (f) => [toByteShort((1 - f) * 2048), toByteShort(f * 2048)];
    const xs = linearAreaWeights(sw, dw).map(([a, b, f]) => [a, b, ...fixed(f)]);
    const ys = linearAreaWeights(sh, dh).map(([a, b, f]) => [a, b, ...fixed(f)]);
    const dst = new Uint8Array(dw * dh * 3);
    const mulHi = (a, b) => Math.floor((a * b) / 65536);
    const row = (y) => {  // the horizontal pass of source row y
      const out = new Int32Array(dw * 3);
      for (let dx = 0; dx < dw; dx++) {
        const [x0, x1, a0, a1] = xs[dx];
        for (let c = 0; c < 3; c++) {
          out[dx * 3 + c] = src[(y * sw + x0) * 3 + c] * a0 + src[(y * sw + x1) * 3 + c] * a1;
        }
      }
      return out;
    };
    for (let dy = 0; dy < dh; dy++) {
      const [y0, y1, b0, b1] = ys[dy];
      const r0 = row(y0), r1 = row(y1);
      for (let i = 0; i < dw * 3; i++) {
        const v = mulHi(r0[i] >> 4, b0) + mulHi(r1[i] >> 4, b1);
        const value = (v + 2) >> 2;
        dst[dy * dw * 3 + i] = value < 0 ? 0 : value > 255 ? 255 : value;
      }
    }
    return dst;
  }

  function resizeArea(src, sw, sh, dw, dh) {
    if (sw === dw && sh === dh) return src;
    const scaleX = 1 / (dw / sw), scaleY = 1 / (dh / sh);
    if (scaleX >= 1 && scaleY >= 1) {
      const ix = Math.round(scaleX), iy = Math.round(scaleY);
      if (Math.abs(scaleX - ix) < Number.EPSILON && Math.abs(scaleY - iy) < Number.EPSILON) {
        return resizeAreaFast(src, sw, sh, dw, dh, ix, iy);
      }
      return resizeAreaDown(src, sw, sh, dw, dh);
    }
    return resizeAreaLinear(src, sw, sh, dw, dh);
  }

  // Anything a canvas can draw (a decoded photo, a video frame) -> {rgb: Uint8Array HxWx3,
  // width, height}, over white
  function fromDrawable(drawable, width, height) {
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, width, height);
    context.drawImage(drawable, 0, 0);  // at its own size (a scaled draw is slower)
    const rgba = context.getImageData(0, 0, width, height).data;
    const rgb = new Uint8Array(width * height * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
      rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
    }
    return { rgb, width, height };
  }

  // A File or Blob -> the same, upright (EXIF orientation)
  async function decode(file) {
    const bitmap = await createImageBitmap(file, {
      imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none",
    });
    try {
      return fromDrawable(bitmap, bitmap.width, bitmap.height);
    } finally {
      bitmap.close();
    }
  }

  // The model's input tensor data (float32) from a decoded photo and model.json
  function toInput(decoded, config) {
    const [height, width] = config.image_size;
    const pixels = resizeArea(decoded.rgb, decoded.width, decoded.height, width, height);
    const data = new Float32Array(height * width * 3);
    const nchw = config.layout === "NCHW";
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        for (let c = 0; c < 3; c++) {
          const value = (pixels[(y * width + x) * 3 + c] - config.mean[c]) / config.std[c];
          data[nchw ? c * height * width + y * width + x : (y * width + x) * 3 + c] = value;
        }
      }
    }
    return { data, pixels, dims: nchw ? [1, 3, height, width] : [1, height, width, 3] };
  }

  return { decode, fromDrawable, resizeArea, toInput, toByte, toByteShort };
})();
