// An HBM pseudo-channel for end-to-end simulation: an AXI4 subordinate over a beat-wide memory,
// fast enough that whole generations run without Python in the loop.
//
// Timing: a read burst's first beat leaves LATENCY cycles after its address was accepted, then
// one beat per cycle; a write's response leaves LATENCY cycles after its last beat. Up to 16
// bursts wait in each address queue. Every handshake can be thinned out at random: a channel is
// ready (or valid) in a cycle with probability rate/256, `rate` from plusarg +hbm_rate=N (default
// 256: never stalls), from xorshift32 generators seeded from SEED and plusarg +seed=N, so masters
// meet back-pressure on every channel.
//
// Addresses are taken relative to `base` and wrap at 2**DEPTH_LOG2 beats. The memory starts as
// zeros, overlaid at time 0 with the file named by plusarg INIT_ARG ($readmemh, one beat per
// line), and is written to the file named by plusarg DUMP_ARG when `dump` rises. Writes below
// byte offset LOG_BYTES (the scalar area: job descriptor and tokens) are logged to the file named
// by plusarg LOG_ARG as `W cycle byte_offset strobes data` (hex), in the order they land.
module tandem_hbm_model #(
    parameter DATA_W = 128,
    parameter ADDR_W = 64,
    parameter DEPTH_LOG2 = 14,
    parameter LATENCY = 24,
    parameter SEED = 1,
    parameter INIT_ARG = "hbm_init=%s",
    parameter DUMP_ARG = "hbm_dump=%s",
    parameter LOG_ARG = "hbm_log=%s",
    parameter LOG_BYTES = 0
) (
    input  wire                clk,
    input  wire                rst,
    input  wire [ADDR_W-1:0]   base,
    input  wire                dump,
    input  wire                awid,
    input  wire [ADDR_W-1:0]   awaddr,
    input  wire [7:0]          awlen,
    input  wire [2:0]          awsize,
    input  wire [1:0]          awburst,
    input  wire                awvalid,
    output wire                awready,
    input  wire [DATA_W-1:0]   wdata,
    input  wire [DATA_W/8-1:0] wstrb,
    input  wire                wlast,
    input  wire                wvalid,
    output wire                wready,
    output wire                bid,
    output wire [1:0]          bresp,
    output reg                 bvalid,
    input  wire                bready,
    input  wire                arid,
    input  wire [ADDR_W-1:0]   araddr,
    input  wire [7:0]          arlen,
    input  wire [2:0]          arsize,
    input  wire [1:0]          arburst,
    input  wire                arvalid,
    output wire                arready,
    output wire                rid,
    output reg  [DATA_W-1:0]   rdata,
    output wire [1:0]          rresp,
    output reg                 rlast,
    output reg                 rvalid,
    input  wire                rready
);
    localparam BEAT_LOG2 = $clog2(DATA_W / 8);
    localparam DEPTH = 1 << DEPTH_LOG2;

    reg [DATA_W-1:0] mem [0:DEPTH-1];
    reg [8*512-1:0] init_path;
    reg [8*512-1:0] dump_path;
    reg [8*512-1:0] log_path;
    integer log_file;
    reg have_dump;
    reg dumped;
    localparam RATE_ARG = "hbm_rate=%d";
`include "random_pauses.vh"
    integer k;
    initial begin
        for (k = 0; k < DEPTH; k = k + 1)
            mem[k] = {DATA_W{1'b0}};  // fresh device memory reads as zeros
        if ($value$plusargs(INIT_ARG, init_path))
            $readmemh(init_path, mem);
        have_dump = $value$plusargs(DUMP_ARG, dump_path);
        log_file = 0;
        if (LOG_BYTES != 0 && $value$plusargs(LOG_ARG, log_path))
            log_file = $fopen(log_path, "w");
    end

    reg [31:0] cycle;
    reg [31:0] rnd_ar, rnd_r, rnd_aw, rnd_w, rnd_b;
    wire go_ar = {1'b0, rnd_ar[7:0]} < rate;
    wire go_r  = {1'b0, rnd_r[7:0]}  < rate;
    wire go_aw = {1'b0, rnd_aw[7:0]} < rate;
    wire go_w  = {1'b0, rnd_w[7:0]}  < rate;
    wire go_b  = {1'b0, rnd_b[7:0]}  < rate;

    function [DEPTH_LOG2-1:0] index(input [ADDR_W-1:0] addr);
        reg [ADDR_W-1:0] offset;
        begin
            offset = addr - base;
            index = offset[BEAT_LOG2 +: DEPTH_LOG2];
        end
    endfunction

    // read address queue
    reg [DEPTH_LOG2-1:0] ar_idx  [0:15];
    reg [7:0]            ar_len  [0:15];
    reg [31:0]           ar_time [0:15];
    reg [3:0] ar_head, ar_tail;
    reg [4:0] ar_count;
    reg [7:0] r_beat;
    assign arready = (ar_count < 16) && go_ar && !rst;
    wire ar_push = arvalid && arready;
    wire r_can = (ar_count != 0) && (cycle >= ar_time[ar_head]) && go_r;
    wire r_pop = (!rvalid || rready) && r_can && (r_beat == ar_len[ar_head]);
    assign rid = 1'b0;
    assign rresp = 2'b00;

    // write address queue and response queue
    reg [DEPTH_LOG2-1:0] aw_idx [0:15];
    reg [3:0] aw_head, aw_tail;
    reg [4:0] aw_count;
    reg [7:0] w_beat;
    reg [31:0] b_time [0:15];
    reg [3:0] b_head, b_tail;
    reg [4:0] b_count;
    assign awready = (aw_count < 16) && go_aw && !rst;
    wire aw_push = awvalid && awready;
    assign wready = (aw_count != 0) && (b_count < 15) && go_w && !rst;
    wire w_take = wvalid && wready;
    wire b_push = w_take && wlast;
    wire b_can = (b_count != 0) && (cycle >= b_time[b_head]) && go_b;
    wire b_pop = (!bvalid || bready) && b_can;
    assign bid = 1'b0;
    assign bresp = 2'b00;

    integer i;
    always @(posedge clk) begin
        if (rst) begin
            cycle <= 0;
            rnd_ar <= SEED ^ seed ^ 32'h9E3779B9;
            rnd_r  <= SEED ^ seed ^ 32'h7F4A7C15;
            rnd_aw <= SEED ^ seed ^ 32'h6A09E667;
            rnd_w  <= SEED ^ seed ^ 32'hBB67AE85;
            rnd_b  <= SEED ^ seed ^ 32'h3C6EF372;
            ar_head <= 0; ar_tail <= 0; ar_count <= 0; r_beat <= 0;
            aw_head <= 0; aw_tail <= 0; aw_count <= 0; w_beat <= 0;
            b_head <= 0; b_tail <= 0; b_count <= 0;
            rvalid <= 0; rlast <= 0; bvalid <= 0;
            dumped <= 0;
        end else begin
            cycle <= cycle + 1;
            rnd_ar <= xorshift(rnd_ar);
            rnd_r  <= xorshift(rnd_r);
            rnd_aw <= xorshift(rnd_aw);
            rnd_w  <= xorshift(rnd_w);
            rnd_b  <= xorshift(rnd_b);
            // reads
            if (ar_push) begin
                ar_idx[ar_tail] <= index(araddr);
                ar_len[ar_tail] <= arlen;
                ar_time[ar_tail] <= cycle + LATENCY;
                ar_tail <= ar_tail + 1;
            end
            if (!rvalid || rready) begin
                if (r_can) begin
                    rvalid <= 1;
                    rdata <= mem[ar_idx[ar_head] + r_beat];
                    rlast <= (r_beat == ar_len[ar_head]);
                    if (r_beat == ar_len[ar_head]) begin
                        r_beat <= 0;
                        ar_head <= ar_head + 1;
                    end else begin
                        r_beat <= r_beat + 1;
                    end
                end else begin
                    rvalid <= 0;
                end
            end
            ar_count <= ar_count + {4'd0, ar_push} - {4'd0, r_pop};
            // writes
            if (aw_push) begin
                aw_idx[aw_tail] <= index(awaddr);
                aw_tail <= aw_tail + 1;
            end
            if (w_take) begin
                if (log_file != 0 && ({aw_idx[aw_head] + w_beat, {BEAT_LOG2{1'b0}}} < LOG_BYTES))
                    $fwrite(log_file, "W %0d %0h %0h %0h\n", cycle,
                            {aw_idx[aw_head] + w_beat, {BEAT_LOG2{1'b0}}}, wstrb, wdata);
                for (i = 0; i < DATA_W / 8; i = i + 1)
                    if (wstrb[i])
                        mem[aw_idx[aw_head] + w_beat][8*i +: 8] <= wdata[8*i +: 8];
                if (wlast) begin
                    w_beat <= 0;
                    aw_head <= aw_head + 1;
                    b_time[b_tail] <= cycle + LATENCY;
                    b_tail <= b_tail + 1;
                end else begin
                    w_beat <= w_beat + 1;
                end
            end
            aw_count <= aw_count + {4'd0, aw_push} - {4'd0, b_push};
            if (!bvalid || bready)
                bvalid <= b_can;
            b_count <= b_count + {4'd0, b_push} - {4'd0, b_pop};
            if (b_pop)
                b_head <= b_head + 1;
            if (dump && !dumped) begin
                if (have_dump)
                    $writememh(dump_path, mem);
                if (log_file != 0)
                    $fflush(log_file);
                dumped <= 1;
            end
        end
    end
endmodule
