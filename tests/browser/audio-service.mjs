// A customer's audio stream service, written from seed 004's protocol alone (Plivo/Vobiz's
// Audio Stream messages), with the `ws` package: nothing here comes from callstream.
//
// It listens on 127.0.0.1 and reports on stdout, one JSON line each:
//   {"type":"listening","port":N}
//   {"type":"message","event":"start"|"media"|...,"message":{...},"samples":[...]}
// where a media message's base64 payload is decoded here (audio/x-l16: little-endian 16-bit;
// audio/x-mulaw: the G.711 table below) and its samples listed, and the payload itself left out.
//   {"type":"closed","code":N}
//
// It takes commands on stdin, one JSON line each:
//   {"type":"play","hz":300,"ms":1000,"rate":8000}  playAudio of a tone, L16 little-endian
//   {"type":"send","message":{...}}                   any message, as given
//
// usage: node audio-service.mjs [port]   (port 0, the default, picks a free one)
import { WebSocketServer } from 'ws';
import readline from 'node:readline';

const out = (line) => process.stdout.write(JSON.stringify(line) + '\n');

// G.711 mu-law decoding, from the ITU-T G.711 definition.
function mulawToLinear(byte) {
  const u = ~byte & 0xff;
  const sign = u & 0x80;
  const exponent = (u >> 4) & 0x07;
  const mantissa = u & 0x0f;
  const magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
  return sign ? -magnitude : magnitude;
}

let encoding = 'audio/x-l16';
let current = null;

const server = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2] ?? 0) });
server.on('listening', () => out({ type: 'listening', port: server.address().port }));
server.on('connection', (socket) => {
  current = socket;
  socket.on('message', (data, isBinary) => {
    if (isBinary) {
      out({ type: 'binary', bytes: data.length });
      return;
    }
    const message = JSON.parse(data.toString('utf8'));
    const line = { type: 'message', event: message.event, message };
    if (message.event === 'start') {
      encoding = message.start.mediaFormat.encoding;
    }
    if (message.event === 'media') {
      const bytes = Buffer.from(message.media.payload, 'base64');
      const samples = [];
      if (encoding === 'audio/x-l16') {
        for (let i = 0; i + 1 < bytes.length; i += 2) samples.push(bytes.readInt16LE(i));
      } else {
        for (const b of bytes) samples.push(mulawToLinear(b));
      }
      line.samples = samples;
      line.message = { ...message, media: { ...message.media, payload: undefined } };
    }
    out(line);
  });
  socket.on('close', (code) => out({ type: 'closed', code }));
});

const input = readline.createInterface({ input: process.stdin });
input.on('line', (text) => {
  const command = JSON.parse(text);
  if (!current) {
    out({ type: 'error', message: 'no connection yet' });
    return;
  }
  if (command.type === 'play') {
    const count = Math.round((command.rate * command.ms) / 1000);
    const pcm = Buffer.alloc(count * 2);
    for (let i = 0; i < count; i++) {
      const v = Math.round(8000 * Math.sin((2 * Math.PI * command.hz * i) / command.rate));
      pcm.writeInt16LE(v, i * 2);
    }
    current.send(
      JSON.stringify({
        event: 'playAudio',
        media: { contentType: 'audio/x-l16', sampleRate: command.rate, payload: pcm.toString('base64') },
      }),
    );
  } else if (command.type === 'send') {
    current.send(JSON.stringify(command.message));
  }
});
input.on('close', () => process.exit(0));
