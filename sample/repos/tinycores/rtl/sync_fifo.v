// tc_sync_fifo: single-clock first-in first-out buffer.
// DEPTH entries of WIDTH bits, DEPTH a power of two (2**AW). A write with
// wr_en stores wr_data unless the FIFO is full; a read with rd_en advances to
// the next entry unless it is empty. rd_data always shows the oldest entry
// (first-word fall-through). full, empty and the occupancy level are
// registered-state outputs; a simultaneous read and write keeps the level.
module tc_sync_fifo #(
    parameter WIDTH = 8,
    parameter AW    = 4
) (
    input              clk,
    input              rst,
    input              wr_en,
    input  [WIDTH-1:0] wr_data,
    input              rd_en,
    output [WIDTH-1:0] rd_data,
    output             full,
    output             empty,
    output [AW:0]      level
);
    localparam DEPTH = 1 << AW;

    reg [WIDTH-1:0] mem [0:DEPTH-1];
    reg [AW:0]      wr_ptr;
    reg [AW:0]      rd_ptr;

    wire do_write = wr_en && !full;
    wire do_read  = rd_en && !empty;

    always @(posedge clk) begin
        if (rst) begin
            wr_ptr <= 0;
            rd_ptr <= 0;
        end else begin
            if (do_write) begin
                mem[wr_ptr[AW-1:0]] <= wr_data;
                wr_ptr <= wr_ptr + 1'b1;
            end
            if (do_read)
                rd_ptr <= rd_ptr + 1'b1;
        end
    end

    assign rd_data = mem[rd_ptr[AW-1:0]];
    assign level   = wr_ptr - rd_ptr;
    assign empty   = (wr_ptr == rd_ptr);
    assign full    = (wr_ptr[AW] != rd_ptr[AW]) && (wr_ptr[AW-1:0] == rd_ptr[AW-1:0]);
endmodule
